"""The trace format: one JSON object per generation call, one per line (JSONL).

The reference pipeline, every exported backend, the parity harness and the demo apps all write and read
this one format (`memlora/schemas/trace.schema.json`). A record::

    {"schema": "memlora-trace/1", "backend": "torch", "op": "extract", "adapter": "extract",
     "prompt_ids": [...], "output_ids": [...], "stop_reason": "eos"|"stop"|"length",
     "topk": [{"ids": [...], "logits": [...]}, ...],   # one entry per decode step, before its token
     "text": "...", "constraint": "mem_update/2"|null}   # the table the output was held to
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import MemloraError
from .paths import SCHEMAS

SCHEMA = "memlora-trace/1"
SCHEMA_PATH = SCHEMAS / "trace.schema.json"
FLOAT32_MAX = 3.4028234663852886e38


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
    constraint: str | None = None  # the output constraint's table (memlora.constrain), None when unconstrained

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


def read_traces(path: Path, vocab_size: int | None = None) -> Iterator[TraceRecord]:
    """Yield the records of a trace file (see `read_numbered`)."""
    return (rec for _, rec in read_numbered(path, vocab_size))


def read_numbered(path: Path, vocab_size: int | None = None) -> Iterator[tuple[int, TraceRecord]]:
    """Yield ``(line, record)`` for each record of a trace file, checked against the schema and for what the
    schema cannot say (ids inside a `vocab_size` vocabulary, one logit per top-k id, one top-k entry per
    decode step), so a bad record is an error naming the file and line before anything replays it."""
    import jsonschema

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MemloraError(f"{path}: cannot read trace file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise MemloraError(f"{path}: not a trace file (not UTF-8 text at byte {e.start})") from e
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    for n, line in enumerate(text.split("\n"), 1):  # JSONL: "\n" ends a line; U+2028 inside a string does not
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise MemloraError(f"{path}:{n}: not JSON ({e})") from e
        error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(record)"
            raise MemloraError(f"{path}:{n}: trace record does not match {SCHEMA_PATH.name} at {where}: {error.message}")
        problem = _inconsistency(obj, vocab_size)
        if problem:
            raise MemloraError(f"{path}:{n}: {problem}")
        yield n, TraceRecord(**obj)


def _inconsistency(rec: dict, vocab_size: int | None) -> str | None:
    """What a schema-valid record can still get wrong and a replay would crash on, or None."""
    topk = rec["topk"]
    lists = [("prompt_ids", rec["prompt_ids"]), ("output_ids", rec["output_ids"]),
             *((f"topk/{i}/ids", step["ids"]) for i, step in enumerate(topk))]
    for name, ids in lists:
        for t in ids:
            if not isinstance(t, int):  # the schema's "integer" admits 3.0
                return f"{name} has {t!r}, not an integer token id"
            if vocab_size is not None and t >= vocab_size:
                return f"{name} has id {t}, past the model's vocabulary of {vocab_size}"
    for i, step in enumerate(topk):
        if len(step["ids"]) != len(step["logits"]):
            return f"topk/{i} has {len(step['ids'])} ids and {len(step['logits'])} logits"
        if not all(abs(x) <= FLOAT32_MAX for x in step["logits"]):
            return f"topk/{i}/logits holds a value that is not a finite float32 logit"
    steps = len(rec["output_ids"]) + (rec["stop_reason"] == "eos")
    if topk and len(topk) != steps:
        return (f"topk has {len(topk)} entries for {steps} decode steps ({len(rec['output_ids'])} output_ids, "
                f"stop_reason {rec['stop_reason']})")
    return None
