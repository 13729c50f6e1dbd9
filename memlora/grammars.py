"""The byte-level languages each memory operation's output is held to (docs/constraints.md).

Each is a deterministic automaton over the bytes of the reply, built directly (no regex engine) so that
every state can still reach acceptance: the token-level compiler (`memlora.token_automaton`) runs the vocabulary
through these tables. The languages are what `memlora.parse` accepts, narrowed to the json.dumps layout the
teacher data and the shipped adapters write, so a reply the automaton accepts always parses.
"""

from __future__ import annotations

import numpy as np

GRAMMAR = "memlora-grammar/1"
"""Version of the languages below; change it with them (compiled tables are cached under it)."""

STRING_BYTES = frozenset(b for b in range(0x20, 0x100) if b not in b'"\\')
"""Bytes a JSON string holds unescaped: anything from 0x20 up but the quote and the backslash (UTF-8 and
invalid bytes alike: the tokenizer decodes those to U+FFFD, which JSON accepts)."""
LINE_BYTES = frozenset([0x09, *range(0x20, 0x100)])
"""Bytes of a one-line answer: no control byte but tab (str.splitlines breaks on \\r, \\v, \\f, \\x1c-\\x1e)."""
VISIBLE = frozenset([*range(0x21, 0x80), 0xC0, 0xC1, *range(0xC3, 0xE1), *range(0xE4, 0x100)])
"""Bytes that start a character str.strip() keeps: printable ASCII, and every lead byte that cannot begin a
Unicode space (C2, E1, E2 and E3 can: U+0085, U+00A0, U+1680, U+2000-U+205F, U+3000). An invalid byte
decodes to U+FFFD, which is not a space either. Continuation bytes never count."""
ESCAPES = {ord('"'): True, ord("\\"): True, ord("/"): True, ord("n"): False, ord("t"): False}
"""Escapes a string may use, and whether the character they stand for is visible (no \\u escapes)."""


class ByteDfa:
    """A deterministic automaton over bytes under construction; literals share their suffixes."""

    def __init__(self) -> None:
        self.edges: list[dict[int, int]] = []
        self.accepting: list[bool] = []
        self._chains: dict[tuple[bytes, int], int] = {}

    def state(self, accepting: bool = False) -> int:
        self.edges.append({})
        self.accepting.append(accepting)
        return len(self.edges) - 1

    def link(self, src: int, byte_set, dst: int) -> None:
        for b in byte_set:
            if self.edges[src].setdefault(b, dst) != dst:
                raise AssertionError(f"state {src}: byte {b:#x} already leads elsewhere")

    def into(self, text: bytes, dst: int) -> int:
        """A state from which `text` leads to `dst` (shared by every literal ending the same way)."""
        if not text:
            return dst
        key = (text, dst)
        if key not in self._chains:
            self._chains[key] = s = self.state()
            self.link(s, [text[0]], self.into(text[1:], dst))
        return self._chains[key]

    def literal(self, src: int, text: bytes, dst: int) -> None:
        self.link(src, [text[0]], self.into(text[1:], dst))

    def string(self, src: int, close: int) -> None:
        """From `src` (just past an opening quote) a JSON string whose closing quote leads to `close` once it
        holds a character str.strip() keeps (`src` itself is the state of a string with none yet)."""
        seen, esc_blank, esc_seen = self.state(), self.state(), self.state()
        self.link(src, STRING_BYTES - VISIBLE, src)
        self.link(src, STRING_BYTES & VISIBLE, seen)
        self.link(seen, STRING_BYTES, seen)
        self.link(src, [0x5C], esc_blank)
        self.link(seen, [0x5C], esc_seen)
        for b, shows in ESCAPES.items():
            self.link(esc_blank, [b], seen if shows else src)
            self.link(esc_seen, [b], seen)
        self.link(seen, [0x22], close)

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(next state per state and byte, -1 = reject; accepting flags)."""
        out = np.full((len(self.edges), 256), -1, np.int32)
        for s, edges in enumerate(self.edges):
            for b, t in edges.items():
                out[s, b] = t
        return out, np.array(self.accepting, bool)


def extract() -> ByteDfa:
    """`{"facts": [` ( string (`, ` string)* )? `]}`: json.dumps of the facts list; no fact is blank."""
    d = ByteDfa()
    start, items, fact, after, close = d.state(), d.state(), d.state(), d.state(), d.state()
    d.literal(start, b'{"facts": [', items)
    d.link(items, [ord('"')], fact)
    d.literal(after, b', "', fact)
    d.string(fact, after)
    d.link(items, [ord("]")], close)
    d.link(after, [ord("]")], close)
    d.link(close, [ord("}")], d.state(True))
    return d


def answer() -> ByteDfa:
    """One line holding a character str.strip() keeps (eos follows)."""
    d = ByteDfa()
    blank, seen = d.state(), d.state(True)
    d.link(blank, LINE_BYTES - VISIBLE, blank)
    d.link(blank, VISIBLE, seen)
    d.link(seen, LINE_BYTES, seen)
    return d


def mem_update(shown: int) -> ByteDfa:
    """Mem0's event list in the teacher's key order, against `shown` memories with ids "0".."shown-1":
    ``{"memory": [`` entries joined by ``, `` ``]}``, an entry being ``{"event": "ADD", "text": S}``,
    ``{"event": "UPDATE", "id": I, "text": S}``, ``{"event": "DELETE", "id": I}`` or
    ``{"event": "NONE", "id": I}``.

    parse_update refuses a second event on an id unless it is NONE, so the entry states exist once per set of
    ids the reply has named so far: UPDATE and DELETE take an id not named yet, NONE any id.
    """
    if not 0 <= shown <= 10:
        raise ValueError(f"shown={shown}: ids must be single digits")
    d = ByteDfa()
    start, items, close = d.state(), d.state(), d.state()
    d.literal(start, b'{"memory": [', items)
    d.link(items, [ord("]")], close)
    d.link(close, [ord("}")], d.state(True))
    entry: dict[int, int] = {}  # named ids (bit i: id i) -> the state just past an entry's "{"
    after: dict[int, int] = {}  # named ids -> the state just past an entry's "}"
    text: dict[int, int] = {}  # named ids -> the state just past the opening quote of an entry's text

    def after_entry(named: int) -> int:
        if named not in after:
            entry[named], after[named] = d.state(), d.state()
            d.link(after[named], [ord("]")], close)
            d.literal(after[named], b", {", entry[named])
        return after[named]

    def text_of(named: int) -> int:
        if named not in text:
            text[named] = d.state()
            d.string(text[named], d.into(b"}", after_entry(named)))
        return text[named]

    def ids(src: int, named: int, fresh: bool, then: bytes, into_text: bool) -> None:
        for i in range(shown):
            if not (fresh and named >> i & 1):
                both = named | 1 << i
                d.link(src, [ord(str(i))], d.into(then, text_of(both) if into_text else after_entry(both)))

    after_entry(0)
    d.link(items, [ord("{")], entry[0])
    done: set[int] = set()
    while len(done) < len(entry):
        named = min(set(entry) - done)
        done.add(named)
        event = d.state()
        d.literal(entry[named], b'"event": "', event)
        d.literal(event, b'ADD", "text": "', text_of(named))
        if named != (1 << shown) - 1:
            update, delete = d.state(), d.state()
            d.literal(event, b'UPDATE", "id": "', update)
            ids(update, named, True, b'", "text": "', True)
            d.literal(event, b'DELETE", "id": "', delete)
            ids(delete, named, True, b'"}', False)
        if shown:
            none = d.state()
            d.literal(event, b'NONE", "id": "', none)
            ids(none, named, False, b'"}', False)
    return d
