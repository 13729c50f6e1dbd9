"""The one interface every runtime implements.

A backend owns a KV cache and runs a chunk of tokens at given positions with a named adapter (or the
merged model / no adapter) and returns logits. Everything else -- the decode loop, stopping, prompts,
parsing, the memory store -- lives in `memlora/` and runs unchanged on every backend, which is what makes
task-level parity between backends meaningful.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """A forward pass with a KV cache.

    `name` identifies the backend in traces and reports (e.g. ``torch``, ``onnx``).
    `adapters` lists the adapter names it can activate; ``None`` means the base (or merged) model.
    `max_context` is the longest sequence the cache holds.
    """

    name: str
    adapters: tuple[str, ...]
    max_context: int

    def reset(self) -> None:
        """Forget the KV cache (a new sequence starts at position 0)."""

    def forward(
        self, tokens: list[int], start: int, adapter: str | None, all_logits: bool = False
    ) -> np.ndarray:
        """Run `tokens` at positions ``start .. start+len-1`` with `adapter` active.

        Cache entries at positions >= `start` are overwritten. Returns float32 logits of shape
        ``(len(tokens), vocab)`` when `all_logits`, else ``(1, vocab)`` for the last position.
        """
