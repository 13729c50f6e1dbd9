"""`memlora ingest FILE`: feed a conversation through extract -> retrieve -> update into the store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import options
from .conversations import Conversation, exchanges, load_conversation, parse_range
from .pipeline import SKIPPED, ExchangeResult, MemoryPipeline
from .prompts import Turn


def plan(conv: Conversation, sessions: str | None = None, window: int = 4) -> list[tuple[str, list[Turn]]]:
    """The exchanges to ingest: windows of `window` turns of the chosen sessions."""
    return exchanges(conv, parse_range(sessions, [s.number for s in conv.sessions]), window)


def ingest(pipeline: MemoryPipeline, todo: list[tuple[str, list[Turn]]], label: str = "ingest",
           progress: bool = True) -> list[ExchangeResult]:
    """Ingest exchange by exchange under the store's writer lock; exchanges already in the store are skipped
    (resumable, and a concurrent ingest of the same turns adds nothing twice)."""
    results = []
    with pipeline.store.writer(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                           TimeElapsedColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=len(todo))
        for key, turns in todo:
            results.append(pipeline.ingest(key, turns))
            bar.advance(task)
    return results


def warn_skipped(results: list[ExchangeResult], source: Path) -> None:
    """One stderr line per exchange recorded as skipped, naming the file and its turns."""
    for r in results:
        if r.status in SKIPPED:
            typer.echo(f"warning: {source}: turns {r.turn_ids[0]}..{r.turn_ids[-1]} skipped ({SKIPPED[r.status]}): "
                       f"{r.error}", err=True)


def main(
    file: Annotated[Path, typer.Argument(help="LoCoMo conversation JSON, or JSONL of {speaker, text, date} turns", exists=True, dir_okay=False)],
    sessions: Annotated[Optional[str], typer.Option(help="sessions to ingest, e.g. 1-3 or 1,4")] = None,
    window: Annotated[int, typer.Option(min=1, help="turns per exchange")] = 4,
    store: options.Store = None,
    backend: options.BackendName = None,
    bundle: options.Bundle = None,
    model: options.Model = None,
    adapters: options.Adapters = None,
    no_adapters: options.NoAdapters = False,
    trace: options.Trace = None,
) -> None:
    """Ingest a conversation into the memory store."""
    from memlora.runtime.registry import open_pipeline

    conv = load_conversation(file)  # bad input fails before any model loads
    todo = plan(conv, sessions, window)
    pipeline = open_pipeline(options.store_path(store), backend, bundle, model, adapters, no_adapters, trace)
    results = ingest(pipeline, todo, f"ingest {conv.id}")
    warn_skipped(results, file)
    counts = Counter(r.status for r in results)
    n = len(pipeline.store.memories())
    Console().print(
        f"exchanges: {', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none'}; "
        f"{n} memories in {pipeline.store.path}"
    )
