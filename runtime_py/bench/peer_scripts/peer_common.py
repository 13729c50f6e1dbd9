"""What every peer driver shares (runs inside a peer venv: standard library and numpy only).

A job file names one artifact and the benchmark settings; `time_greedy` runs the same measurement as
memlora's bench on two callables -- ``prefill(ids) -> logits`` and ``step(token, pos) -> logits`` -- so
every peer is timed the same way: warm-up, repeats, medians with the min-max spread, greedy tokens kept.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def read_job() -> tuple[dict, Path]:
    job = json.loads(Path(sys.argv[1]).read_text())
    return job, Path(sys.argv[2])


def write_rows(out: Path, rows: list[dict]) -> None:
    out.write_text(json.dumps(rows))


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def size_mb(paths) -> float:
    return sum(os.path.getsize(p) for p in paths) / 1e6


def peak_rss_mb() -> float:
    """Peak resident set of this process: VmHWM, the high-water mark of its own memory map. Not
    ``getrusage().ru_maxrss``: Linux carries that over exec from the bench process that spawned this one,
    so every measured row would report at least the driver's own size."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):  # no procfs: ru_maxrss is the best there is (KiB on Linux)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_greedy(job: dict, prefill, step, argmax) -> dict:
    """Warm-up plus repeats of prefill + greedy decode of ``job['decode_tokens']`` tokens."""
    prompt, n_new = job["prompt"], job["decode_tokens"]

    def once():
        t0 = time.perf_counter()
        token = argmax(prefill(prompt))
        t1 = time.perf_counter()
        tokens = [token]
        for pos in range(len(prompt), len(prompt) + n_new - 1):
            tokens.append(argmax(step(tokens[-1], pos)))
        t2 = time.perf_counter()
        return {"ttft_ms": (t1 - t0) * 1e3, "prefill_tok_s": len(prompt) / (t1 - t0),
                "decode_tok_s": (n_new - 1) / (t2 - t1), "tokens": tokens}

    for _ in range(job["warmup"]):
        once()
    runs = [once() for _ in range(job["repeats"])]
    result = {k: spread([r[k] for r in runs]) for k in ("decode_tok_s", "prefill_tok_s", "ttft_ms")}
    result["tokens"] = runs[-1]["tokens"]
    return result
