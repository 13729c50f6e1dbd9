"""Where a decode step of our ONNX path spends its time: the decode loop's Python work, the backend's
per-call work (binding inputs, the logits copy), onnxruntime's graph run itself, and inside the graph
each op type's share.

Three clocks: `generate` wall time per token and `OnnxBackend.forward` time per token (both recorded by
`measure`), and `run_with_iobinding` alone on a binding already prepared for one step. The differences
are the loop's overhead and the backend's overhead; the graph time is the floor our Python can reach.
The op shares come from onnxruntime's profiler on a second backend over the same bundle (profiling slows
every kernel, so it reports shares, not times).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def graph_profile(backend, prompt: list[int], adapter: str | None, measured: dict, calls: int = 32) -> dict:
    """Split a decode step's `forward` into onnxruntime's graph run and the backend's own work around it.

    `measured` is a `measure` result. Whole `forward` calls and bare graph runs (on the binding that
    `forward` just prepared) alternate at one position in the middle of the decode, so both see the same
    machine state; the backend's overhead is the difference of their medians, and the graph's share of
    the measured forward time is the rest (the columns add up to the measured step)."""
    session, binding = backend._runs[adapter]
    tokens = measured["tokens"]
    position = len(prompt) + len(tokens) // 2
    backend.forward([*prompt, *tokens][:position], 0, adapter)  # the cache holds the context of the step
    forward, graph = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        backend.forward([tokens[-1]], position, adapter)
        t1 = time.perf_counter()
        session.run_with_iobinding(binding)
        t2 = time.perf_counter()
        forward.append((t1 - t0) * 1e3)
        graph.append((t2 - t1) * 1e3)
    overhead = max(0.0, statistics.median(forward) - statistics.median(graph))
    per = measured["per_token"]
    graph_ms = per["forward_ms"] - overhead
    return {"graph_ms": graph_ms, "backend_overhead_ms": overhead, "graph_share": graph_ms / per["step_ms"],
            "logits_copy_ms": _copy_ms(backend)}


def _copy_ms(backend) -> float:
    """Cost of the per-step logits copy out of the reused OrtValue (vocab floats)."""
    value = backend._step_logits
    t0 = time.perf_counter()
    for _ in range(100):
        value.numpy()[0].copy()
    return (time.perf_counter() - t0) * 10


def op_shares(bundle: Path, prompt: list[int], adapter: str | None, threads: int, steps: int = 24) -> dict:
    """Share of decode-step kernel time per op type (largest first) and kernels run per step."""
    import json
    import tempfile
    from collections import Counter

    import numpy as np

    from memlora.runtime.onnx_backend import end_profiling, from_bundle

    with tempfile.TemporaryDirectory(prefix="memlora-ort-profile-") as tmp:
        backend = from_bundle(bundle, threads, profile_prefix=f"{tmp}/ort")
        token, pos = int(np.argmax(backend.forward(prompt, 0, adapter)[-1])), len(prompt)
        for _ in range(steps):
            token = int(np.argmax(backend.forward([token], pos, adapter)[-1]))
            pos += 1
        events = [e for f in end_profiling(backend) for e in json.loads(f.read_text())]
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    prefill_end = runs[0]["ts"] + runs[0]["dur"]
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
               and e["ts"] >= prefill_end]
    time_by_op: Counter = Counter()
    for e in kernels:
        time_by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(time_by_op.values())
    return {"kernels_per_step": len(kernels) / steps,
            "op_share": {op: t / total for op, t in time_by_op.most_common()}}
