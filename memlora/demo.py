"""`memlora demo`: the main job on the default model, end to end.

Set up the default model, ingest a short two-session conversation with the reference pipeline (shipped
adapters when present), answer questions from memory, export the bundle and check it with the parity
harness. Everything lands in one output directory a user can inspect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEMO_CONVERSATION = Path(__file__).parent / "data" / "demo_conversation.jsonl"
DEMO_QUESTIONS = (
    "What is the name of Ben's dog?",
    "What is Ana's job?",
    "What does Ben do for work now?",
)


def main(
    out: Annotated[Path, typer.Option(help="directory for the store, bundle and reports")] = Path("out/demo"),
) -> None:
    """Run the main job on the default model: setup, ingest, ask, export, parity."""
    from .conversations import load_conversation
    from .ingest import ingest, plan
    from .session import open_pipeline
    from .setup import ensure_default_model

    console = Console()
    ensure_default_model(console=console)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = open_pipeline(out / "store.sqlite", trace=out / "reference_trace.jsonl")
    console.print(f"adapters: {', '.join(pipeline.backend.adapters) or 'none (base model alone)'}")
    conv = load_conversation(DEMO_CONVERSATION)
    counts = ingest(pipeline, plan(conv, window=4), "ingest demo conversation")
    console.print(f"exchanges: {counts}; memories:")
    for m in pipeline.store.memories():
        console.print(f"  {m.id} ({m.date}) {m.text}", markup=False)
    for q in DEMO_QUESTIONS:
        console.print(f"Q: {q}\nA: {pipeline.answer(q).text}", markup=False)
