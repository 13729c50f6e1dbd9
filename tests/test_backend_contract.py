"""The `memlora.backend.Backend` contract, one suite over every runtime backend on the tiny taught model.

Each backend is opened the way users open it (`memlora.runtime.registry.open_backend`): torch on the model
and adapters, the others on the session's separable bundles. The expected messages are written here once,
so every backend must word every error the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from memlora.backend import Backend
from memlora.errors import MemloraError
from memlora.runtime.registry import open_backend

BUNDLES = {"onnx": "onnx_bundle", "executorch": "et_bundle", "coreml": "coreml_bundle", "gguf": "gguf_bundle"}
"""Each bundle backend and the session fixture of its tiny bundle."""
PROMPT = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 120, 33, 301, 77, 12, 400]
NEXT = [21, 9, 130]
FP32_TOL, FP16_TOL = 1e-4, 1.5e-2
"""Logits of one backend computed in two ways (chunked or not, all rows or the last) differ by rounding only:
O(1e-6) in fp32 for the tiny model's O(1) logits; Core ML programs compute in fp16, where chunking changes
the rounding by a few ulps per op (the bound of tests/test_coreml.py, relative to the largest logit)."""


@pytest.fixture(scope="module")
def opener(request, tiny_model, taught_adapters) -> Callable[[str], Backend]:
    """A fresh backend of a name each call; the bundle fixtures are built on first use, once per session."""

    def make(name: str) -> Backend:
        if name == "torch":
            return open_backend("torch", model=tiny_model, adapters=taught_adapters)[0]
        return open_backend(name, bundle=request.getfixturevalue(BUNDLES[name]))[0]

    return make


@pytest.fixture(scope="module", params=["torch", *BUNDLES])
def backend(request, opener) -> Backend:
    """One backend per name, shared by the tests of this module: each test begins with `reset()`."""
    return opener(request.param)


def assert_close(backend: Backend, got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to the rounding of the backend's precision."""
    np.testing.assert_allclose(got, want, atol=tolerance(backend, want), rtol=0)


def tolerance(backend: Backend, want: np.ndarray) -> float:
    """Absolute bound on a rounding difference from `want` (see FP32_TOL)."""
    return FP16_TOL * float(np.abs(want).max()) if backend.name == "coreml" else FP32_TOL


def run(backend: Backend, chunks: list[tuple[list[int], int, str | None]]) -> np.ndarray:
    """The concatenated logits of every position of a list of (tokens, start, adapter) calls."""
    return np.concatenate([backend.forward(tokens, start, adapter, True) for tokens, start, adapter in chunks])


def test_shapes_dtype_and_last_row(backend):
    backend.reset()
    every = backend.forward(PROMPT, 0, "extract", all_logits=True)
    last = backend.forward(PROMPT, 0, "extract")
    assert every.dtype == last.dtype == np.float32
    assert every.shape == (len(PROMPT), every.shape[1]) and last.shape == (1, every.shape[1])
    assert_close(backend, every[-1:], last)


def test_reset_then_start_0_equals_a_fresh_backend(backend, opener):
    """A longer sequence of another adapter first: after `reset()` none of it may leak into the new one."""
    fresh = run(opener(backend.name), [(PROMPT[:6], 0, "answer"), (NEXT[:1], 6, "answer")])
    backend.reset()
    run(backend, [(PROMPT, 0, "extract"), (NEXT, len(PROMPT), "extract")])
    backend.reset()
    with pytest.raises(MemloraError) as refused:
        backend.forward(NEXT[:1], 6, "answer")
    assert str(refused.value) == (f"{backend.name}: start 6 is beyond the 0 positions in the cache "
                                  "(a sequence starts at 0 and continues where the last call ended)")
    assert_close(backend, run(backend, [(PROMPT[:6], 0, "answer"), (NEXT[:1], 6, "answer")]), fresh)


def test_chunks_and_a_rewind_equal_one_pass(backend):
    """Continuing at ``start == cached`` and rewinding to ``start < cached`` both give one pass's logits."""
    backend.reset()
    whole = backend.forward(PROMPT, 0, "mem_update", all_logits=True)
    backend.reset()
    chunked = run(backend, [(PROMPT[:9], 0, "mem_update"), (PROMPT[9:10], 9, "mem_update"),
                            (PROMPT[10:], 10, "mem_update")])
    assert_close(backend, chunked, whole)
    run(backend, [(NEXT, len(PROMPT), "mem_update")])
    rewound = backend.forward(PROMPT[4:], 4, "mem_update", all_logits=True)  # positions 4.. recomputed
    assert_close(backend, rewound, whole[4:])


@pytest.mark.parametrize("adapter", [None, "answer"])
def test_adapter_change_at_start_0_equals_a_fresh_backend(backend, opener, adapter):
    fresh = opener(backend.name).forward(PROMPT, 0, adapter, all_logits=True)
    backend.reset()
    backend.forward(PROMPT, 0, "extract")
    assert_close(backend, backend.forward(PROMPT, 0, adapter, all_logits=True), fresh)
    assert np.abs(backend.forward(PROMPT, 0, "extract", all_logits=True) - fresh).max() > 10 * tolerance(backend, fresh)


N = len(PROMPT)
REFUSED: dict[str, tuple[Callable[[Backend], tuple], str]] = {
    "no tokens": (lambda b: ([], N, "extract"), "{name}: no tokens to run at start 16"),
    "negative start": (lambda b: ([1], -1, "extract"), "{name}: start -1 is negative"),
    "start beyond the cache": (lambda b: ([1], N + 1, "extract"),
                               "{name}: start 17 is beyond the 16 positions in the cache "
                               "(a sequence starts at 0 and continues where the last call ended)"),
    "past max_context": (lambda b: ([1] * (b.max_context - N + 1), N, "extract"),
                         "{name}: positions 16..{ctx} exceed the context of {ctx}"),
    "token id = vocab": (lambda b: ([5, b.vocab], N, "extract"),
                         "{name}: token id {vocab} is outside the vocabulary of {vocab}"),
    "negative token id": (lambda b: ([-1], N, "extract"), "{name}: token id -1 is outside the vocabulary of {vocab}"),
    "unknown adapter": (lambda b: ([1], 0, "nope"),
                        "{name}: unknown adapter 'nope' (adapters: extract, mem_update, answer)"),
    "adapter change mid-sequence": (lambda b: ([1], N, "answer"),
                                    "{name}: adapter 'answer' at start 16 would continue a sequence of adapter "
                                    "'extract'; an adapter change needs start 0"),
    "base model mid-sequence": (lambda b: ([1], 5, None),
                                "{name}: adapter None at start 5 would continue a sequence of adapter 'extract'; "
                                "an adapter change needs start 0"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_call_has_the_one_wording_and_leaves_the_cache(backend, case):
    """Every backend raises the same one-line MemloraError before running, so the sequence continues intact."""
    call, message = REFUSED[case]
    backend.reset()
    want = run(backend, [(PROMPT, 0, "extract"), (NEXT, N, "extract")])[N:]
    backend.reset()
    backend.forward(PROMPT, 0, "extract")
    with pytest.raises(MemloraError) as refused:
        backend.forward(*call(backend))
    assert str(refused.value) == message.format(name=backend.name, ctx=backend.max_context, vocab=backend.vocab)
    assert_close(backend, run(backend, [(NEXT, N, "extract")]), want)
