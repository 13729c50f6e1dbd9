"""Command-line options shared by the verbs that run the pipeline (defined once, used everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


Store = Annotated[Optional[Path], typer.Option("--store", help="SQLite memory store [default: $MEMLORA_HOME/store.sqlite]")]
BackendName = Annotated[Optional[str], typer.Option(
    "--backend", help="torch (reference), onnx, executorch or coreml [default: torch; with --bundle alone, the "
                      "bundle's only target]")]
Bundle = Annotated[Optional[Path], typer.Option("--bundle", help="exported bundle directory (non-torch backends)")]
Model = Annotated[Optional[Path], typer.Option("--model", help="HF model directory [default: the model from `memlora setup`]")]
Adapters = Annotated[Optional[Path], typer.Option("--adapters", help="adapter directory with extract/, mem_update/, answer/ [default: the shipped adapters]")]
NoAdapters = Annotated[bool, typer.Option("--no-adapters", help="run the bare base model (to compare against the adapters)")]
Trace = Annotated[Optional[Path], typer.Option("--trace", help="append every generation call to this JSONL trace")]


def store_path(store: Path | None) -> Path:
    from .paths import default_store

    return store or default_store()
