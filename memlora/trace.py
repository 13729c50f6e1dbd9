"""The trace format: one JSON object per generation call, one per line (JSONL).

The reference pipeline, every exported backend, the parity harness and the demo apps all write and read
this one format (`memlora/schemas/trace.schema.json`). A record::

    {"schema": "memlora-trace/1", "backend": "torch", "op": "extract", "adapter": "extract",
     "prompt_ids": [...], "output_ids": [...], "stop_reason": "eos"|"stop"|"length",
     "topk": [{"ids": [...], "logits": [...]}, ...],   # one entry per decode step, before its token
     "text": "..."}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import MemloraError

SCHEMA = "memlora-trace/1"


@dataclass
class TraceRecord:
    """Everything needed to replay and compare one generation call."""

    backend: str
    op: str
    adapter: str | None
    prompt_ids: list[int]
    output_ids: list[int]
    stop_reason: str
    topk: list[dict[str, list]] = field(default_factory=list)
    text: str = ""
    schema: str = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class TraceWriter:
    """Appends records to a JSONL file, flushing each line so a killed process keeps whole records."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: TraceRecord) -> None:
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_traces(path: Path) -> Iterator[TraceRecord]:
    """Yield the records of a trace file; a bad line is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise MemloraError(f"{path}: cannot read trace file ({e.strerror})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if obj.get("schema") != SCHEMA:
                raise ValueError(f"schema is {obj.get('schema')!r}, expected {SCHEMA!r}")
            yield TraceRecord(**obj)
        except (ValueError, TypeError) as e:
            raise MemloraError(f"{path}:{n}: not a valid trace record ({e})") from e
