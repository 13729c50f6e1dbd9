"""Decode-time output constraints: each operation's token automaton, its file, and the engine the decode loop
asks at every step which tokens may come next (docs/constraints.md; the device core implements the same).

The tables are compiled from the tokenizer at export time (`memlora.token_automaton`) and shipped in the
bundle; the torch reference, which has no bundle, compiles them once per tokenizer into memlora's home.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import grammars
from .errors import MemloraError
from .paths import SCHEMAS, home
from .prompts import MAX_SHOWN
from .token_automaton import NEVER, Table, compile_tables, token_bytes

FORMAT = "memlora-constraints/1"
MAGIC = b"MLCONSTR"
SCHEMA_PATH = SCHEMAS / "constraints.schema.json"
_ALIGN = 8


def table_name(op: str, shown: int = 0) -> str:
    """The table an operation decodes under: ``mem_update/<memories shown>``, else the operation's name."""
    return f"{op}/{shown}" if op == "mem_update" else op


def automata() -> dict[str, grammars.ByteDfa]:
    """Every table a constraint file holds, by name."""
    return {"extract": grammars.extract(), "answer": grammars.answer(),
            **{table_name("mem_update", n): grammars.mem_update(n) for n in range(MAX_SHOWN + 1)}}


class Constraint:
    """One table's automaton over token ids. States are ints; eos is the decode loop's to add (`accepts`)."""

    def __init__(self, class_of: np.ndarray, table: Table):
        self.name = table.name
        self.class_of = class_of.astype(np.intp)  # gathering with native ints is 3x faster than with uint16
        self._next = table.next
        self._accepting = table.accepting
        self._cost = table.cost
        self._cost_or_never = np.append(table.cost, np.iinfo(np.uint16).max).astype(np.int64)  # index -1: reject

    def start(self) -> int:
        return 0

    def needs(self, state: int) -> int:
        """Fewest tokens that finish an output from `state`, the eos token included."""
        return int(self._cost[state])

    def accepts(self, state: int) -> bool:
        """Whether eos may come now (the output so far is complete)."""
        return bool(self._accepting[state])

    def allowed(self, state: int, remaining: int) -> np.ndarray:
        """Which token ids may come next when `remaining` tokens (this one and eos included) are left: those
        that lead to a state that can still finish in the ``remaining - 1`` after it. Eos ids are False."""
        return (self._cost_or_never[self._next[state]] < remaining)[self.class_of]

    def advance(self, state: int, token: int) -> int:
        nxt = int(self._next[state, self.class_of[token] if token < len(self.class_of) else NEVER])
        if nxt < 0:
            raise MemloraError(f"constraint {self.name}: token {token} is not allowed in state {state}")
        return nxt


@dataclass(frozen=True)
class Constraints:
    """A constraint file's contents: the token classes and one table per name (`table_name`)."""

    class_of: np.ndarray  # (vocab,) uint16
    tables: dict[str, Table]
    tokenizer_sha256: str
    grammar: str = grammars.GRAMMAR
    max_shown: int = MAX_SHOWN

    def for_op(self, op: str, shown: int = 0) -> Constraint:
        return self.table(table_name(op, shown))

    def table(self, name: str) -> Constraint:
        if name not in self.tables:
            raise MemloraError(f"no output constraint {name!r} (have {', '.join(self.tables)})")
        return Constraint(self.class_of, self.tables[name])

    def to_bytes(self) -> bytes:
        """The file: MAGIC, the header's length (uint32 LE), the JSON header, zeros to a multiple of 8, then
        the arrays (little-endian, each at a multiple of 8 from the data start) as the header places them."""
        arrays: list[np.ndarray] = []

        def place(a: np.ndarray, dtype: str) -> dict:
            offset = sum(-(-x.nbytes // _ALIGN) * _ALIGN for x in arrays)
            arrays.append(np.ascontiguousarray(a, dtype))
            return {"offset": offset, "dtype": dtype, "shape": list(a.shape)}

        header = {"format": FORMAT, "grammar": self.grammar, "tokenizer_sha256": self.tokenizer_sha256,
                  "max_shown": self.max_shown, "vocab_size": len(self.class_of),
                  "num_classes": int(next(iter(self.tables.values())).next.shape[1]),
                  "class_of": place(self.class_of, "<u2"), "tables": []}
        for t in self.tables.values():
            header["tables"].append({"name": t.name, "states": len(t.next), "start": 0,
                                     "next": place(t.next, "<i2"), "cost": place(t.cost, "<u2"),
                                     "accepting": place(t.accepting, "|u1")})
        data = b"".join(a.tobytes() + bytes(-a.nbytes % _ALIGN) for a in arrays)
        header["data_sha256"] = hashlib.sha256(data).hexdigest()
        text = json.dumps(header, separators=(",", ":")).encode()
        lead = MAGIC + len(text).to_bytes(4, "little") + text
        return lead + bytes(-len(lead) % _ALIGN) + data

    @classmethod
    def from_bytes(cls, blob: bytes, source: str) -> Constraints:
        """Read a constraint file, checking its header against the schema and every array against the header;
        any problem is one error naming `source`."""
        import jsonschema

        if blob[:8] != MAGIC or len(blob) < 12:
            raise MemloraError(f"{source}: not a memlora constraint file")
        size = int.from_bytes(blob[8:12], "little")
        try:
            header = json.loads(blob[12 : 12 + size].decode("utf-8"))
            jsonschema.validate(header, json.loads(SCHEMA_PATH.read_text()))
        except (ValueError, RecursionError, jsonschema.ValidationError) as e:
            raise MemloraError(f"{source}: constraint header is not valid ({str(e).splitlines()[0]})") from None
        start = -(-(12 + size) // _ALIGN) * _ALIGN
        data = blob[start:]
        if hashlib.sha256(data).hexdigest() != header["data_sha256"]:
            raise MemloraError(f"{source}: constraint tables are corrupt (data_sha256 mismatch)")

        def array(spec: dict, shape: list[int]) -> np.ndarray:
            if spec["shape"] != shape:
                raise MemloraError(f"{source}: an array has shape {spec['shape']}, the header implies {shape}")
            count = int(np.prod(shape))
            end = spec["offset"] + count * np.dtype(spec["dtype"]).itemsize
            if end > len(data):
                raise MemloraError(f"{source}: an array runs past the end of the file")
            return np.frombuffer(data, spec["dtype"], count, spec["offset"]).reshape(shape)

        vocab, classes = header["vocab_size"], header["num_classes"]
        class_of = array(header["class_of"], [vocab])
        if class_of.max(initial=0) >= classes:
            raise MemloraError(f"{source}: a token's class is past num_classes ({classes})")
        tables = {}
        for t in header["tables"]:
            n = t["states"]
            table = Table(t["name"], array(t["next"], [n, classes]), array(t["cost"], [n]),
                          array(t["accepting"], [n]).astype(bool))
            if table.next.min(initial=0) < -1 or table.next.max(initial=0) >= n:
                raise MemloraError(f"{source}: table {t['name']} leads past its {n} states")
            tables[t["name"]] = table
        return cls(class_of, tables, header["tokenizer_sha256"], header["grammar"], header["max_shown"])

    def is_current(self, tokenizer_sha256: str) -> bool:
        """Compiled from this tokenizer with this memlora's languages and memory cap."""
        return (self.tokenizer_sha256, self.grammar, self.max_shown, set(self.tables)) == \
            (tokenizer_sha256, grammars.GRAMMAR, MAX_SHOWN, set(automata()))


def load(path: Path) -> Constraints:
    try:
        blob = Path(path).read_bytes()
    except OSError as e:
        raise MemloraError(f"{path}: cannot read constraint file ({e.strerror})") from e
    return Constraints.from_bytes(blob, str(path))


def compile_json(tokenizer_json: str, source: str) -> Constraints:
    """Compile every table for the tokenizer whose tokenizer.json text is `tokenizer_json`."""
    class_of, tables = compile_tables(automata(), token_bytes(tokenizer_json, source))
    return Constraints(class_of, {t.name: t for t in tables}, hashlib.sha256(tokenizer_json.encode()).hexdigest())


def tokenizer_json(tokenizer) -> str:
    """The tokenizer.json text of a transformers fast tokenizer (the tokenizers library's serialization)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise MemloraError(f"{type(tokenizer).__name__}: no tokenizers backend to compile output constraints from "
                           "(a bundle run reads the bundle's constraint file)")
    return backend.to_str()


def for_tokenizer(tokenizer) -> Constraints:
    """The constraints of `tokenizer`, compiled once and kept under memlora's home by the tokenizer's sha256
    (a stale or corrupt file there is compiled again and replaced)."""
    text = tokenizer_json(tokenizer)
    sha = hashlib.sha256(text.encode()).hexdigest()
    path = home() / "constraints" / f"{sha}.bin"
    if path.is_file():
        try:
            cached = load(path)
            if cached.is_current(sha):
                return cached
        except MemloraError:
            pass
    fresh = compile_json(text, str(Path(getattr(tokenizer, "name_or_path", "") or ".") / "tokenizer.json"))
    aside = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        aside.write_bytes(fresh.to_bytes())
        os.replace(aside, path)
    except OSError:  # a home we cannot write to only costs the next run another compile
        with contextlib.suppress(OSError):
            aside.unlink()
    return fresh
