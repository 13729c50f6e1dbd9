"""`memlora memories`: list the store's memories, with their history of changes."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import options
from .pipeline import SKIPPED
from .store import MemoryStore


def main(
    store: options.Store = None,
    history: Annotated[bool, typer.Option("--history", help="show every ADD/UPDATE/DELETE with its turns")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List stored memories (and their change history)."""
    path = options.store_path(store)
    s = MemoryStore(path, read_only=True)
    mems, rows = s.memories(), s.history()
    if as_json:
        print(json.dumps({"memories": [m.__dict__ for m in mems],
                          "history": [r.__dict__ for r in rows] if history else None}, indent=1))
        return
    console = Console()
    table = Table(title=f"{len(mems)} memories in {path}")
    for col in ("id", "date", "memory"):
        table.add_column(col)
    for m in mems:
        table.add_row(m.id, m.date, m.text)
    console.print(table)
    if history:
        h = Table(title="history")
        for col in ("seq", "memory", "event", "old", "new", "turns"):
            h.add_column(col)
        for r in rows:
            h.add_row(str(r.seq), r.memory_id, r.event, r.old_text or "", r.new_text or "", ",".join(r.turn_ids))
        console.print(h)
    statuses = Counter(e["status"] for e in s.exchanges())
    for status, why in SKIPPED.items():
        if n := statuses[status]:
            console.print(f"[yellow]{n} exchanges skipped: {why} (kept in the store's `exchanges` table)[/yellow]")
