"""Where a decode step of our ONNX path spends its time: the decode loop's Python work, the backend's
per-call work (binding inputs, the logits copy) and onnxruntime's graph run itself.

Three clocks: `generate` wall time per token and `OnnxBackend.forward` time per token (both recorded by
`measure`), and `run_with_iobinding` alone on a binding already prepared for one step. The differences
are the loop's overhead and the backend's overhead; the graph time is the floor our Python can reach.
"""

from __future__ import annotations

import statistics
import time


def graph_profile(backend, prompt: list[int], adapter: str | None, measured: dict, calls: int = 16) -> dict:
    """Split a decode step's `forward` into onnxruntime's graph run and the backend's own work around it.

    `measured` is a `measure` result (its ``per_token`` forward time); the graph is then run alone on a
    binding already prepared for one step in the middle of the decode."""
    session, binding = backend._runs[adapter]
    tokens = measured["tokens"]
    backend.forward([tokens[-1]], len(prompt) + len(tokens) // 2, adapter)
    graph = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        graph.append((time.perf_counter() - t0) * 1e3)
    graph_ms = statistics.median(graph)
    per = measured["per_token"]
    return {"graph_ms": graph_ms, "backend_overhead_ms": per["forward_ms"] - graph_ms,
            "graph_share": graph_ms / per["step_ms"], "logits_copy_ms": _copy_ms(backend)}


def _copy_ms(backend) -> float:
    """Cost of the per-step logits copy out of the reused OrtValue (vocab floats)."""
    value = backend._step_logits
    t0 = time.perf_counter()
    for _ in range(100):
        value.numpy()[0].copy()
    return (time.perf_counter() - t0) * 10
