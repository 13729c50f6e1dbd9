"""Device traces: records an app wrote (schema `memlora/schemas/trace.schema.json`) replayed on the reference.

Each record is teacher-forced through the fp32 reference along the app's own output: at every step the
reference's top-1 must be the token the app chose, and the reference's logits for the app's recorded top-k
ids must match the recorded values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.backend import Backend
from memlora.errors import MemloraError
from memlora.trace import TraceRecord, read_numbered

from .token import TOP_K


def validate_file(path: Path, vocab_size: int) -> list[tuple[int, TraceRecord]]:
    """Every record of a trace file with its line, checked against the schema and the model's vocabulary
    before any model loads; a trace without records is an error too (replaying it would check nothing)."""
    records = list(read_numbered(path, vocab_size))
    if not records:
        raise MemloraError(f"{path}: no trace records: nothing to check")
    return records


def check_traces(path: Path, records: list[tuple[int, TraceRecord]], reference: Backend) -> dict[str, dict]:
    """Per backend named in the numbered records of trace file `path` (`validate_file`): token agreement and
    top-k logit error against the reference."""
    groups: dict[str, dict] = {}
    for n, rec in records:
        if rec.adapter is not None and rec.adapter not in reference.adapters:
            raise MemloraError(f"{path}:{n}: adapter {rec.adapter!r} is not one of the reference's {reference.adapters}")
        if len(rec.prompt_ids) + len(rec.output_ids) > reference.max_context:
            raise MemloraError(f"{path}:{n}: record is longer than the reference's context ({reference.max_context})")
        chosen = [s["ids"][0] for s in rec.topk] or rec.output_ids
        reference.reset()
        logits = reference.forward(rec.prompt_ids, 0, rec.adapter)[-1]
        agree, overlap, max_abs = [], [], 0.0
        for i, token in enumerate(chosen):
            if i:
                logits = reference.forward([rec.output_ids[i - 1]], len(rec.prompt_ids) + i - 1, rec.adapter)[-1]
            agree.append(int(np.argmax(logits)) == token)
            if rec.topk:
                ids = rec.topk[i]["ids"]
                ref_top = set(np.argpartition(-logits, TOP_K)[:TOP_K].tolist())
                overlap.append(len(ref_top & set(ids[:TOP_K])) / min(TOP_K, len(ids)))
                max_abs = max(max_abs, float(np.abs(logits[ids] - np.asarray(rec.topk[i]["logits"])).max()))
        first = next((i for i, ok in enumerate(agree) if not ok), None)
        g = groups.setdefault(rec.backend, {"records": [], "agree": [], "overlap": [], "max_abs": 0.0})
        g["records"].append({"line": n, "op": rec.op, "steps": len(agree), "exact": first is None,
                             "first_divergence": first})
        g["agree"] += agree
        g["overlap"] += overlap
        g["max_abs"] = max(g["max_abs"], max_abs)
    out = {}
    for backend, g in groups.items():
        firsts = [(r["first_divergence"], r["line"]) for r in g["records"] if r["first_divergence"] is not None]
        out[backend] = {
            "records": len(g["records"]),
            "token": {"top1_agreement": float(np.mean(g["agree"])) if g["agree"] else None,
                      "top5_overlap": float(np.mean(g["overlap"])) if g["overlap"] else None,
                      "greedy_exact_rate": float(np.mean([r["exact"] for r in g["records"]])),
                      "first_divergence": None if not firsts else {"position": min(firsts)[0], "line": min(firsts)[1]}},
            "tensor": {"max_abs": g["max_abs"]} if g["overlap"] else None,  # null: no top-k logits recorded
            "details": g["records"],
        }
    return out
