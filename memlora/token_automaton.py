"""Compile byte-level languages into token-level tables: what `memlora.constrain` ships and interprets.

The whole vocabulary goes through every byte automaton at once (numpy, one byte position at a time, keeping
only the (token, start state) pairs still alive), tokens that behave alike in every state of every table
share a class, each table keeps the states a token sequence can reach from its start and finish from, and
each state learns how many tokens it needs at least to finish (eos included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .errors import MemloraError
from .grammars import ByteDfa

NEVER = 0
"""The class of tokens no state allows: special tokens (eos is the decode loop's, not the table's) and any
token whose bytes no automaton can take. It always exists, so its column is all -1."""
UNREACHABLE = np.iinfo(np.uint16).max
_CHUNK = 4096  # tokens per pass: bounds the live (token, state) pairs held at once


def byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode): the character that stands for each byte in a
    token's string."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


def token_bytes(tokenizer_json: str, source: str) -> list[bytes | None]:
    """The raw bytes of every token id of a byte-level BPE tokenizer (its tokenizer.json text); None for an
    added (special) token or an id the vocabulary skips. `source` names the tokenizer in errors."""
    spec = json.loads(tokenizer_json)
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise MemloraError(f"{source}: constrained decoding needs a byte-level BPE tokenizer (model "
                           f"{model.get('type')}, decoder {decoder.get('type')})")
    added = {int(a["id"]) for a in spec.get("added_tokens", [])}
    vocab = {int(i): t for t, i in model["vocab"].items()}
    out: list[bytes | None] = [None] * (max([*vocab, *added]) + 1)
    alphabet = byte_alphabet()
    for i, text in vocab.items():
        if i in added:
            continue
        try:
            out[i] = bytes(alphabet[ch] for ch in text)
        except KeyError:
            raise MemloraError(f"{source}: token {i} ({text!r}) is not in the byte-level alphabet") from None
    return out


@dataclass(frozen=True)
class Table:
    """One language at the token level: ``next[state, class]`` (-1 rejects), tokens to finish, acceptance."""

    name: str
    next: np.ndarray  # (states, classes) int16
    cost: np.ndarray  # (states,) uint16, UNREACHABLE never happens in a compiled table
    accepting: np.ndarray  # (states,) bool; state 0 is the start


def _alive_pairs(nxt: np.ndarray, sink: int, tokens: list[tuple[int, bytes]]) -> tuple[np.ndarray, ...]:
    """(token id, start state, end state) of every token of `tokens` that some state takes whole."""
    ids = np.array([i for i, _ in tokens], np.int64)
    lengths = np.array([len(b) for _, b in tokens])
    raw = np.zeros((len(tokens), lengths.max()), np.uint8)
    for row, (_, b) in enumerate(tokens):
        raw[row, : len(b)] = np.frombuffer(b, np.uint8)
    rows, starts = [], []
    for b in np.unique(raw[:, 0]):
        states = np.nonzero(nxt[:, b] != sink)[0]
        which = np.nonzero(raw[:, 0] == b)[0]
        rows.append(np.repeat(which, len(states)))
        starts.append(np.tile(states, len(which)))
    row, start = np.concatenate(rows), np.concatenate(starts)
    cur = nxt[start, raw[row, 0]]
    for pos in range(1, raw.shape[1]):
        live = cur != sink
        row, start, cur = row[live], start[live], cur[live]
        going = lengths[row] > pos
        cur[going] = nxt[cur[going], raw[row[going], pos]]
    live = cur != sink
    return ids[row[live]], start[live], cur[live]


def _hash(values: np.ndarray, key: int) -> np.ndarray:
    """splitmix64 of `values` (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _classes(vocab: int, tok: np.ndarray, start: np.ndarray, end: np.ndarray, states: int) -> np.ndarray:
    """Class of each token id: tokens with equal sets of (start, end) pairs share one, numbered from 1 in
    order of their first token id; tokens with none are NEVER. Hashes group them; `_dense` checks exactly."""
    order = np.argsort(tok, kind="stable")
    tok, pair = tok[order], start[order].astype(np.int64) * states + end[order]
    ids, bounds = np.unique(tok, return_index=True)
    sums = np.zeros((len(ids), 3), np.uint64)
    with np.errstate(over="ignore"):
        for col, key in enumerate((0x9E3779B97F4A7C15, 0xD1B54A32D192ED03)):
            sums[:, col] = np.add.reduceat(_hash(pair, key), bounds)
    sums[:, 2] = np.diff(np.append(bounds, len(tok)))
    _, first, inverse = np.unique(sums, axis=0, return_index=True, return_inverse=True)
    cls = np.full(vocab, NEVER, np.int64)
    cls[ids] = _rank(first)[inverse.ravel()] + 1
    return cls


def _rank(first: np.ndarray) -> np.ndarray:
    """Number groups (given by the index of their first member) in order of that index."""
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank


def _dense(tok, start, end, cls, states: int, classes: int) -> np.ndarray:
    """The (state, class) table, checked against every token's own transitions (a hash collision would show)."""
    table = np.full((states, classes), -1, np.int32)
    table[start, cls[tok]] = end
    counts = np.bincount(tok, minlength=len(cls))
    per_class = (table >= 0).sum(axis=0)
    if not (table[start, cls[tok]] == end).all() or not (counts == per_class[cls]).all():
        raise AssertionError("token classes collided; compile with other hash keys")
    return table


def _reachable(table: np.ndarray) -> np.ndarray:
    seen = np.zeros(len(table), bool)
    seen[0] = True
    frontier = np.array([0])
    while len(frontier):
        nxt = np.unique(table[frontier])
        nxt = nxt[nxt >= 0]
        frontier = nxt[~seen[nxt]]
        seen[frontier] = True
    return seen


def _cost(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Fewest tokens from each state to an accepting state plus the eos token (UNREACHABLE if none)."""
    cost = np.where(accepting, 1, UNREACHABLE).astype(np.int64)
    while True:
        via = np.where(table >= 0, cost[table], UNREACHABLE).min(axis=1) + 1
        new = np.minimum(cost, via)
        if (new == cost).all():
            return np.minimum(cost, UNREACHABLE).astype(np.uint16)
        cost = new


def _trim(name: str, table: np.ndarray, accepting: np.ndarray) -> Table:
    """Keep the states a token sequence reaches from the start and that can still finish; renumber them in
    order (the start stays 0)."""
    cost = _cost(table, accepting)
    table = np.where((table >= 0) & (cost[np.maximum(table, 0)] != UNREACHABLE), table, -1)
    keep = _reachable(table)
    index = np.cumsum(keep) - 1
    table = np.where(table >= 0, index[np.maximum(table, 0)], -1)[keep]
    return Table(name, table, cost[keep], accepting[keep])


def compile_tables(automata: dict[str, ByteDfa], tokens: list[bytes | None]) -> tuple[np.ndarray, list[Table]]:
    """The class of every token id and one token-level table per named byte automaton."""
    raw = [a.table() for a in automata.values()]
    offsets = np.cumsum([0] + [len(t) for t, _ in raw])
    sink = int(offsets[-1])
    nxt = np.full((sink + 1, 256), sink, np.int32)
    for (t, _), off in zip(raw, offsets):
        nxt[off : off + len(t)] = np.where(t >= 0, t + off, sink)
    live = sorted(((i, b) for i, b in enumerate(tokens) if b), key=lambda x: len(x[1]))
    parts = [_alive_pairs(nxt, sink, live[k : k + _CHUNK]) for k in range(0, len(live), _CHUNK)]
    tok, start, end = (np.concatenate(p) for p in zip(*parts))
    cls = _classes(len(tokens), tok, start, end, sink)
    dense = _dense(tok, start, end, cls, sink, int(cls.max()) + 1)
    rows = [dense[off : off + len(t)] for (t, _), off in zip(raw, offsets)]
    tables = [_trim(name, np.where(r >= 0, r - off, -1), acc)
              for name, r, (_, acc), off in zip(automata, rows, raw, offsets)]
    return _regroup(cls, tables)


def _regroup(cls: np.ndarray, tables: list[Table]) -> tuple[np.ndarray, list[Table]]:
    """Merge the classes the trimmed tables no longer tell apart; NEVER stays class 0."""
    columns = np.concatenate([t.next for t in tables]).T
    _, first, inverse = np.unique(columns, axis=0, return_index=True, return_inverse=True)
    new = _rank(first)[inverse.ravel()]  # NEVER's column (all -1) comes first: it is column 0
    keep = np.sort(first)
    return new[cls].astype(np.uint16), [Table(t.name, t.next[:, keep].astype(np.int16), t.cost, t.accepting)
                                         for t in tables]
