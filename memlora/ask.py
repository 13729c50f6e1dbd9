"""`memlora ask "QUESTION"`: retrieve memories and answer with the answer adapter."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from . import options


def main(
    question: Annotated[str, typer.Argument(help="the question to answer from memory")],
    show_memories: Annotated[bool, typer.Option("--show-memories", help="print the memories used")] = False,
    store: options.Store = None,
    backend: options.BackendName = None,
    bundle: options.Bundle = None,
    model: options.Model = None,
    adapters: options.Adapters = None,
    no_adapters: options.NoAdapters = False,
    trace: options.Trace = None,
) -> None:
    """Answer a question from the memory store."""
    from memlora.runtime.registry import open_pipeline

    pipeline = open_pipeline(options.store_path(store), backend, bundle, model, adapters, no_adapters, trace,
                             read_only=True)
    answer = pipeline.answer(question)
    console = Console()
    if show_memories:
        for m in answer.memories:
            console.print(f"[dim]{m.score:.2f} {m.id} ({m.date}) {m.text}[/dim]")
    console.print(answer.text, markup=False, highlight=False)
