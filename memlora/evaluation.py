"""What the `memlora eval` verbs share: the threads option, and a report written whole, naming what produced it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

Threads = Annotated[Optional[int], typer.Option(min=1, help="CPU threads of torch and of a bundle's runtime")]


def write_report(report: dict, pipeline, no_adapters: bool, path: Path) -> None:
    """Add the backend and whether adapters ran, then write `path` beside it and rename it into place."""
    report.update(backend=pipeline.backend.name, adapters=not no_adapters and bool(pipeline.backend.adapters))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.rename(path)
