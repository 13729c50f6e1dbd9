"""Embedder level of parity: a target's bundle embedder against the transformers reference it was exported from.

Two measures per target: the cosine between its vector and the reference's for every text retrieval embeds
in the golden conversation (its questions, its facts, its memories), and retrieval agreement -- the share of
queries (every question and every fact) whose top-k memory ids, in order, equal the reference's (memories the
reference scores within the precision's `TIE` of each other may come in either order), ranking the
conversation's memories as `memlora.store.MemoryStore.search` does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from memlora.checksum import sha256_file
from memlora.export.bundle import MANIFEST, Bundle

from .prompts import Conversation

TOP_K = 5
"""Memories retrieved per query (`memlora.pipeline`'s retrieval depth)."""
TIE = {"fp16": 2.0 ** -9}
"""Reference scores closer than this are a tie: a target may order tied memories either way, and that is not a
retrieval difference. An fp16 embedder rounds each component of both vectors to 2**-11 relative, so a cosine
near 1 it computes is only good to about two fp16 ulps (2**-9); a tie of any other precision is `TIE_DEFAULT`,
the reference's own thread-dependent summation."""
TIE_DEFAULT = 1e-4


def texts(conversation: Conversation) -> tuple[list[str], list[str]]:
    """(queries, memories): questions and facts; every memory text the conversation stores, once each."""
    facts = [f for group in conversation.facts for f in group]
    memories = [m.text for group in conversation.memories_before for m in group]
    memories += [m.text for m in conversation.final_memories] + facts
    return [*conversation.questions, *facts], list(dict.fromkeys(memories))


@cache
def _reference(source: str, sha256: str, all_texts: tuple[str, ...]) -> np.ndarray:
    from memlora.embed import Embedder

    return Embedder(Path(source)).embed(list(all_texts))


def top_k(queries: np.ndarray, memories: np.ndarray, k: int = TOP_K) -> list[list[int]]:
    """Indices of the k best memories per query, in the store's order (stable on ties)."""
    return [list(np.argsort(-(memories @ q), kind="stable")[:k]) for q in queries]


def agrees(ref_scores: np.ndarray, ref_ids: list[int], got_ids: list[int], tie: float = TIE_DEFAULT) -> bool:
    """The target's top-k is the reference's, up to the order of memories the reference scores as tied."""
    return ref_ids == got_ids or bool(np.allclose(ref_scores[ref_ids], ref_scores[got_ids], rtol=0, atol=tie))


def embedder_level(bundle: Bundle, target: str, conversation: Conversation) -> dict | None:
    """The embedder entry of `target`'s parity report: None when the bundle has no embedder for it, or
    ``{"skipped": why}`` when its reference model is no longer where it was exported from."""
    section = bundle.manifest.get("embedder")
    if section is None or target not in section["targets"]:
        return None
    source = _source(bundle)
    if source is None:
        return {"skipped": f"{bundle.path / MANIFEST}: the reference embedder {section['source']} is missing or changed"}
    from memlora.runtime.registry import open_embedder

    queries, memories = texts(conversation)
    all_texts = (*queries, *memories)
    ref = _reference(str(source), section["source_sha256"], all_texts)
    got = open_embedder(target, bundle.path, verify=False).embed(list(all_texts))
    cosine = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    n = len(queries)
    ref_top, got_top = top_k(ref[:n], ref[n:]), top_k(got[:n], got[n:])
    precision = section["targets"][target]["quantization"]["scheme"]
    tie = TIE.get(precision, TIE_DEFAULT)
    agree = [agrees(ref[n:] @ q, r, g, tie) for q, r, g in zip(ref[:n], ref_top, got_top)]
    return {
        "precision": precision, "tie": tie,
        "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
        "retrieval_agreement": float(np.mean(agree)), "top_k": min(TOP_K, len(memories)),
        "queries": n, "memories": len(memories),
        "disagreements": [q for q, ok in zip(all_texts[:n], agree) if not ok],
    }


def _source(bundle: Bundle) -> Path | None:
    """The model the bundle's embedder was exported from, if it is still there unchanged."""
    section = bundle.manifest.get("embedder")
    if section is None:
        return None
    source = Path(section["source"])
    weights = source / "model.safetensors"
    return source if weights.is_file() and sha256_file(weights) == section["source_sha256"] else None


def task_embedders(bundle: Bundle, targets: list[str]) -> tuple[object, dict[str, object]]:
    """(reference, per target) embedders of the task level. A target with its own embedder in the bundle
    retrieves with it (the whole pipeline then runs on the bundle's artifacts, as `memlora ask --bundle` does)
    against the reference it was exported from; without one, or when that source is gone, both sides use the
    reference, so the task level still compares the decoders."""
    from memlora.embed import Embedder
    from memlora.runtime.registry import open_embedder

    source = _source(bundle)
    reference = Embedder(source) if source is not None else Embedder()
    own = bundle.manifest.get("embedder", {}).get("targets", {}) if source is not None else {}
    return reference, {t: open_embedder(t, bundle.path, verify=False) if t in own else reference for t in targets}
