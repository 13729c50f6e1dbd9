"""Where a decode step of our ONNX path spends its time: the decode loop's Python work, the backend's
per-call work (binding inputs, the logits copy) and onnxruntime's graph run itself.

Three clocks over the same decode steps: `generate` wall time per token, `OnnxBackend.forward` time per
token, and `run_with_iobinding` alone on a binding already prepared for one step. The differences are the
loop's overhead and the backend's overhead; the last is the floor our Python can reach.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .measure import BenchConfig, Timed, run_once


def profile_decode(backend, tokenizer, prompt: list[int], adapter: str | None, config: BenchConfig) -> dict:
    """Milliseconds per decoded token by layer of the stack (medians over the repeats)."""
    timed = Timed(backend)
    loop, forward = [], []
    for _ in range(max(2, config.repeats)):
        run = run_once(timed, tokenizer, prompt, adapter, config.decode_tokens)
        steps = timed.calls[1:]
        wall = steps[-1][1] - timed.calls[0][1]
        loop.append(wall / len(steps) * 1e3)
        forward.append(sum(e - s for s, e in steps) / len(steps) * 1e3)
    session, binding = backend._runs[adapter]
    # one decode step bound as `forward` would bind it, then the graph alone, repeatedly
    pos = len(prompt) + config.decode_tokens // 2
    backend.forward([run["tokens"][-1]], pos, adapter)
    graph = []
    for _ in range(config.decode_tokens):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        graph.append((time.perf_counter() - t0) * 1e3)
    loop_ms, forward_ms, graph_ms = statistics.median(loop), statistics.median(forward), statistics.median(graph)
    return {
        "step_ms": loop_ms,
        "decode_loop_overhead_ms": loop_ms - forward_ms,
        "backend_overhead_ms": forward_ms - graph_ms,
        "graph_ms": graph_ms,
        "graph_share": graph_ms / loop_ms,
        "logits_copy_ms": _copy_ms(backend),
    }


def _copy_ms(backend) -> float:
    """Cost of the per-step logits copy out of the reused OrtValue (vocab floats)."""
    value = backend._step_logits
    t0 = time.perf_counter()
    for _ in range(100):
        np.asarray(value.numpy()[0]).copy()
    return (time.perf_counter() - t0) * 10
