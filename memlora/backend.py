"""The one interface every runtime implements, and the shared checks that make them honour it alike.

A backend owns a KV cache and runs a chunk of tokens at given positions with a named adapter (or the
merged model / no adapter) and returns logits. Everything else -- the decode loop, stopping, prompts,
parsing, the memory store -- lives in `memlora/` and runs unchanged on every backend, which is what makes
task-level parity between backends meaningful.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, runtime_checkable

import numpy as np

from memlora.errors import MemloraError


@runtime_checkable
class Backend(Protocol):
    """A forward pass with a KV cache. Every backend honours this contract identically.

    `name` identifies the backend in traces, reports and errors (e.g. ``torch``, ``onnx``).
    `adapters` lists the adapter names it can activate; ``None`` (always available) is the base model.
    `max_context` is the longest sequence the cache holds. ``vocab`` below is the number of token ids, the
    logits' width (`CheckedBackend.vocab`).

    **The sequence.** The cache holds one sequence: the tokens at positions ``0 .. cached-1`` written by
    earlier calls, all run with one adapter (``cached`` is 0 for a new backend). ``reset()`` forgets the
    sequence (``cached`` becomes 0); it clears no memory, since a call at start 0 overwrites what it needs
    and masks the rest. So after ``reset()`` a sequence gives the logits it gives on a fresh backend.

    **forward(tokens, start, adapter, all_logits)** runs `tokens` at positions ``start .. start+len-1``
    with `adapter` active. It requires:

    - ``len(tokens) >= 1``, and every token id in ``0 .. vocab-1``;
    - ``0 <= start <= cached``: the call continues the sequence (``start == cached``) or rewinds it
      (``start < cached``: positions >= `start` are recomputed, later ones forgotten); start 0 begins a new
      sequence. Afterwards ``cached == start + len(tokens)``;
    - ``start + len(tokens) <= max_context``;
    - `adapter` is ``None`` or one of `adapters`;
    - the adapter changes only at ``start == 0``. This is the one rule every runtime keeps alike:
      ExecuTorch merged programs and Core ML functions each own their cache state, so there another adapter
      cannot continue the cache one adapter wrote; and no caller wants a sequence of mixed adapters (every
      generation runs its prompt from position 0, and switching there costs nothing on any backend).

    A call that breaks a requirement raises `MemloraError` before anything runs, so the sequence is as it
    was. The message is one line naming the backend and the value, the same on every backend
    (`CheckedBackend.check`), e.g. ``onnx: unknown adapter 'x' (adapters: extract, answer)``,
    ``onnx: start 17 is beyond the 16 positions in the cache (...)``, ``onnx: positions 16..1024 exceed the
    context of 1024``, ``onnx: adapter 'answer' at start 16 would continue a sequence of adapter 'extract';
    an adapter change needs start 0``.

    Returns float32 logits of shape ``(len(tokens), vocab)`` when `all_logits`, else ``(1, vocab)`` for the
    last position -- the last row of the former, up to float rounding.
    """

    name: str
    adapters: tuple[str, ...]
    max_context: int

    def reset(self) -> None:
        """Forget the sequence: the next forward must start at position 0."""

    def forward(
        self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False
    ) -> np.ndarray:
        """Run `tokens` at positions ``start .. start+len-1`` with `adapter` active (see the class)."""


class CheckedBackend(ABC):
    """The `Backend` contract's bookkeeping and checks, written once for every runtime backend.

    A subclass sets `name`, `adapters`, `max_context` and `vocab` and implements `_run`, which may assume
    every requirement holds: so each error exists once, with one wording, and no backend can drift.
    """

    name: str
    adapters: tuple[str, ...]
    max_context: int
    vocab: int
    cached: int = 0
    """Positions ``0 .. cached-1`` hold the current sequence."""
    sequence_adapter: str | None = None
    """The adapter that wrote the current sequence."""

    def reset(self) -> None:
        """Forget the sequence: the next forward must start at position 0."""
        self.cached = 0

    def forward(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False) -> np.ndarray:
        """Check the call against the contract, run it, and record the sequence it leaves."""
        self.check(tokens, start, adapter)
        self.cached = 0  # a runtime failure below may leave the cache half written: nothing to continue
        logits = self._run(tokens, start, adapter, all_logits)
        self.cached, self.sequence_adapter = start + len(tokens), adapter
        return logits

    def check(self, tokens: list[int], start: int, adapter: str | None) -> None:
        """Raise the contract's `MemloraError` for a call that breaks a requirement of `Backend.forward`."""
        if adapter is not None and adapter not in self.adapters:
            have = ", ".join(self.adapters) or "none"
            raise MemloraError(f"{self.name}: unknown adapter {adapter!r} (adapters: {have})")
        if len(tokens) == 0:
            raise MemloraError(f"{self.name}: no tokens to run at start {start}")
        if start < 0:
            raise MemloraError(f"{self.name}: start {start} is negative")
        if start > self.cached:
            raise MemloraError(f"{self.name}: start {start} is beyond the {self.cached} positions in the cache "
                               "(a sequence starts at 0 and continues where the last call ended)")
        if start + len(tokens) > self.max_context:
            raise MemloraError(f"{self.name}: positions {start}..{start + len(tokens) - 1} exceed the context of "
                               f"{self.max_context}")
        if start > 0 and adapter != self.sequence_adapter:
            raise MemloraError(f"{self.name}: adapter {adapter!r} at start {start} would continue a sequence of "
                               f"adapter {self.sequence_adapter!r}; an adapter change needs start 0")
        bad = next((t for t in tokens if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise MemloraError(f"{self.name}: token id {bad} is outside the vocabulary of {self.vocab}")

    @abstractmethod
    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        """The runtime's forward pass of a call that meets the contract."""
