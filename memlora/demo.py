"""`memlora demo`: the main job on the default model, end to end.

Set up the default model, ingest a short two-session conversation with the reference pipeline (shipped
adapters when present), answer questions from memory, export the bundle and check it with the parity
harness. Everything lands in one output directory a user can inspect. Each answer and each stored memory is
judged against the conversation's truth (memlora/data/demo_conversation.truth.json): right or wrong answer,
memory naming the right person or not, and a summary line. Wrong answers do not fail the demo; parity does.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .truth import DEMO_CONVERSATION, load_truth, truth_path


def main(
    out: Annotated[Path, typer.Option(help="directory for the store, bundle and reports")] = Path("out/demo"),
    target: Annotated[str, typer.Option(help="export target(s) for the bundle, comma-separated")] = "onnx",
    mode: Annotated[str, typer.Option(help="merged | separable adapters in the bundle")] = "separable",
    quant: Annotated[str, typer.Option(help="fp32 | int8 | int4 base weights in the bundle")] = "int8",
) -> None:
    """Run the main job on the default model: setup, ingest, ask, export, parity."""
    from memlora.export.command import export_bundle
    from memlora.runtime.parity.html import write_html
    from memlora.runtime.parity.report import table, write_json
    from memlora.runtime.parity.run import run_parity
    from memlora.runtime.parity.thresholds import load_thresholds
    from memlora.runtime.registry import open_pipeline

    from .conversations import load_conversation
    from .embed import package_model_dir
    from .errors import MemloraError
    from .ingest import ingest, plan, warn_skipped
    from .paths import default_model_dir
    from .quality import describe, score
    from .session import default_adapters
    from .setup import ensure_default_model

    console = Console()
    ensure_default_model(console=console)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = open_pipeline(out / "store.sqlite", trace=out / "reference_trace.jsonl")
    console.print(f"adapters: {', '.join(pipeline.backend.adapters) or 'none (base model alone)'}")
    conv = load_conversation(DEMO_CONVERSATION)
    truth = load_truth(truth_path(DEMO_CONVERSATION))
    results = ingest(pipeline, plan(conv, window=4), "ingest demo conversation")
    warn_skipped(results, DEMO_CONVERSATION)
    console.print(f"exchanges: {dict(Counter(r.status for r in results))}")
    answers = [pipeline.answer(q.question).text for q in truth.questions]
    judged = score("demo", truth, answers, pipeline.store.memories(), pipeline.store.exchanges())
    for text in describe(judged):
        console.print(text, markup=False, soft_wrap=True)

    adapters = default_adapters()
    if adapters is None:
        raise MemloraError("no shipped adapters in memlora/default_adapters: nothing to export")
    bundle = out / f"bundle-{target.replace(',', '-')}-{mode}-{quant}"
    console.print(f"exporting {target} ({mode}, {quant}) to {bundle}")
    targets = [t.strip() for t in target.split(",")]
    export_bundle(default_model_dir(), adapters, targets, mode, quant, 32, bundle,
                  stage=lambda s: console.print(f"  {s}"), embedder=package_model_dir())
    console.print("parity against the transformers+peft reference (quick golden set)")
    report = run_parity(bundle, default_model_dir(), adapters, targets, thresholds=load_thresholds(None),
                        quick=True, progress=lambda m: console.print(f"  {m}", markup=False))
    write_json(report, out / "parity.json")
    write_html(report, out / "parity.html")
    console.print(table(report), markup=False)
    console.print(f"reports: {out / 'parity.json'}, {out / 'parity.html'}")
    if not report["passed"]:
        raise typer.Exit(1)
