"""`memlora bench`'s embedder rows: retrieval's sentences/s at batch 1 (one query) and batch 32 (a burst of new
facts) per bundle target's embedder, with its size in the bundle, beside the PyTorch reference
(`memlora.embed.Embedder`) on the model the bundle's embedder was exported from (the manifest's ``source``).

Measured in this process, one warm-up then `repeats` timed passes over the same sentences; a target whose
artifact takes fewer than 32 texts per call (ExecuTorch: batch 1) gets no batch-32 figure, and says so.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from memlora.errors import MemloraError

BATCHES = (1, 32)
SENTENCES = [f"{who} {what} on {day} May 2023" for who in ("Caroline", "Melanie") for what in (
    "went to a support group", "painted a sunrise with her kids", "researched adoption agencies",
    "ran a charity race for mental health", "signed up for a pottery class", "read a book about self-acceptance",
    "took the children camping by the lake", "talked about her transition with her friends")
    for day in (3, 17)]
"""32 memory-like sentences: one batch-32 call, or 32 batch-1 calls, per pass."""


def sentences_per_s(embedder, batch: int, repeats: int) -> dict:
    """Median, min and max sentences/s over `repeats` passes of `SENTENCES` in calls of `batch` texts."""
    def one_pass() -> float:
        t0 = time.perf_counter()
        for start in range(0, len(SENTENCES), batch):
            embedder.embed(SENTENCES[start : start + batch])
        return len(SENTENCES) / (time.perf_counter() - t0)

    one_pass()  # warm-up: first-call allocations and graph preparation
    runs = [one_pass() for _ in range(repeats)]
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def _measure(embedder, max_batch: int, repeats: int) -> dict:
    """The row's figures; a batch beyond the artifact's `max_batch` is left out with the reason."""
    row: dict = {"max_batch": max_batch}
    for batch in BATCHES:
        if batch > max_batch:
            row["note"] = f"batch {max_batch} only: the artifact takes {max_batch} text(s) per call"
            row[f"batch{batch}_s"] = None
        else:
            row[f"batch{batch}_s"] = sentences_per_s(embedder, batch, repeats)
    return row


def reference_row(source: Path, repeats: int) -> dict:
    """The PyTorch reference on the embedder's source model (size: its weight files)."""
    from memlora.embed import BATCH_SIZE, Embedder

    embedder = Embedder(source)
    size = sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
    return {"who": "reference: PyTorch", "target": "torch", "precision": "fp32", "source": str(source),
            "size_mb": size / 1e6, **_measure(embedder, BATCH_SIZE, repeats)}


def target_row(bundle: Path, target: str, threads: int, repeats: int) -> dict:
    """One bundle target's embedder, opened as `memlora ask` opens it."""
    from memlora.runtime.registry import open_embedder

    embedder = open_embedder(target, bundle, threads, verify=False)
    return {"who": "memlora", "target": target, "precision": embedder.recipe.scheme, "bundle": str(bundle),
            "size_mb": embedder.size_bytes / 1e6, **_measure(embedder, embedder.max_batch, repeats)}


def embedder_rows(bundles: list[Path], threads: int, repeats: int, log=print) -> list[dict]:
    """The reference row of every distinct source model, then every bundle target's embedder row; a row
    that cannot run carries its error instead of figures."""
    from memlora.export.bundle import load_bundle

    sources: dict[str, dict] = {}
    rows: list[dict] = []
    for path in bundles:
        section = load_bundle(path, verify=False).manifest.get("embedder")
        if section is None:
            log(f"  {path}: no embedder in this bundle (exported with --no-embedder)")
            continue
        source = section["source"]
        if source not in sources:
            log(f"embedder reference: PyTorch on {source}")
            try:
                sources[source] = reference_row(Path(source), repeats)
            except MemloraError as e:
                sources[source] = {"who": "reference: PyTorch", "target": "torch", "source": source, "error": str(e)}
        for target in section["targets"]:
            log(f"embedder {target} ({path})")
            try:
                rows.append(target_row(path, target, threads, repeats))
            except MemloraError as e:
                rows.append({"who": "memlora", "target": target, "bundle": str(path), "error": str(e)})
    return [*sources.values(), *rows]


def table(rows: list[dict]) -> str:
    """The embedder rows as Markdown: sentences/s (median, min–max) at batch 1 and 32, and size."""
    def cell(row: dict, batch: int) -> str:
        s = row.get(f"batch{batch}_s")
        return "—" if s is None else f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"

    lines = ["| embedder | precision | size MB | sentences/s, batch 1 | sentences/s, batch 32 | note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        name = f"{r['who']} {r['target']}" + (f" ({r['bundle']})" if "bundle" in r else "")
        if "error" in r:
            lines.append(f"| {name} | — | — | — | — | failed: {r['error']} |")
            continue
        lines.append(f"| {name} | {r['precision']} | {r['size_mb']:.1f} | {cell(r, 1)} | {cell(r, 32)} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)
