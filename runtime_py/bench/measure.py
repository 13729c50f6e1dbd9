"""Measure one artifact the way users run it: through `memlora.generate.generate` with an adapter active.

A `Timed` proxy wraps the backend and timestamps every `forward`, so one `generate` call yields the time
to first token (the prefill call), prefill tokens/s and decode tokens/s -- including the decode loop's own
Python work between steps, which is part of what users get. Adapter switch time is the extra latency of a
one-token forward that changes adapter over one that keeps it.

Each artifact is measured in a subprocess of its own (``python -m memlora.runtime.bench.measure JOB OUT``)
so its peak RSS is its own and runtimes do not share thread pools or caches with each other.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


from memlora.generate import GenerationConfig, generate

from . import genai

# the peers' drivers summarize timings and read peak RSS with these too: one definition for every row
from .peer_scripts.peer_common import peak_rss_mb, spread


BENCH_ADAPTER = "extract"
"""The adapter active while ours decode (the longest-output operation); switching goes to another one."""


@dataclass(frozen=True)
class BenchConfig:
    """What every row runs: the same prompt length, decode length, warm-up and repeats, in each of
    `rounds` passes over all rows (alternate passes in reverse order, so a machine that drifts faster or
    slower over the run favours no row)."""

    prompt_tokens: int = 512
    decode_tokens: int = 128
    warmup: int = 1
    repeats: int = 3
    threads: int = 2
    switch_repeats: int = 20
    rounds: int = 2


class Timed:
    """A Backend proxy recording (start, end) of every forward call; the decode loop sees the backend."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend.name
        self.adapters = backend.adapters
        self.max_context = backend.max_context
        self.calls: list[tuple[float, float]] = []

    def reset(self) -> None:
        self.backend.reset()

    def forward(self, tokens, start, adapter, all_logits=False):
        t0 = time.perf_counter()
        out = self.backend.forward(tokens, start, adapter, all_logits)
        self.calls.append((t0, time.perf_counter()))
        return out


def run_once(timed: Timed, tokenizer, prompt: list[int], adapter: str | None, n_new: int) -> dict:
    """One greedy generation of exactly `n_new` tokens (no eos stop): timings and the tokens.

    Per decoded token it also splits the wall time into the backend's forward and the decode loop's own
    work around it (argmax, stop checks, bookkeeping)."""
    timed.calls.clear()
    t0 = time.perf_counter()
    gen = generate(timed, tokenizer, prompt, adapter, GenerationConfig(max_new_tokens=n_new), eos_ids=set())
    t_end = time.perf_counter()
    prefill_end = timed.calls[0][1]
    prefill_s = timed.calls[0][1] - timed.calls[0][0]
    steps = timed.calls[1:]
    step_ms = (t_end - prefill_end) / max(1, len(steps)) * 1e3
    forward_ms = sum(e - s for s, e in steps) / max(1, len(steps)) * 1e3
    return {
        "ttft_ms": (prefill_end - t0) * 1e3,
        "prefill_tok_s": len(prompt) / prefill_s,
        "decode_tok_s": len(steps) / (t_end - prefill_end) if steps else float("nan"),
        "step_ms": step_ms,
        "forward_ms": forward_ms,
        "tokens": gen.output_ids,
    }


def switch_ms(backend, adapters: tuple[str | None, ...], token: int, repeats: int) -> float | None:
    """Extra milliseconds of a one-token forward that switches adapter, over one that does not.

    The calls go a, a, b, b, a, a, ...: every other call switches, so both kinds are measured side by side
    and a slow spell of the machine hits them alike. Measured at position 0 so every backend accepts the
    switch (the reference restarts its cache there)."""
    if len(adapters) < 2:
        return None
    first, second = adapters[:2]
    for a in (first, second, second):  # warm both; the first timed call (to `first`) then switches
        backend.forward([token], 0, a)
    switching, same = [], []
    for i in range(2 * repeats):
        t0 = time.perf_counter()
        backend.forward([token], 0, (first, second)[(i // 2) % 2])
        (switching if i % 2 == 0 else same).append(time.perf_counter() - t0)
    return max(0.0, (statistics.median(switching) - statistics.median(same)) * 1e3)


def measure(backend, tokenizer, prompt: list[int], adapter: str | None, config: BenchConfig) -> dict:
    """Warm up, repeat, and summarize one artifact; the tokens of the last run are kept for agreement."""
    timed = Timed(backend)
    for _ in range(config.warmup):  # the full prompt and a few steps: every buffer and kernel gets touched
        run_once(timed, tokenizer, prompt, adapter, min(8, config.decode_tokens))
    runs = [run_once(timed, tokenizer, prompt, adapter, config.decode_tokens) for _ in range(config.repeats)]
    result = {key: spread([r[key] for r in runs]) for key in ("decode_tok_s", "prefill_tok_s", "ttft_ms")}
    step, forward = (statistics.median(r[k] for r in runs) for k in ("step_ms", "forward_ms"))
    result["per_token"] = {"step_ms": step, "forward_ms": forward, "decode_loop_overhead_ms": step - forward}
    others = [a for a in backend.adapters if a != adapter]
    result["switch_ms"] = switch_ms(backend, (adapter, *others[:1]), prompt[0], config.switch_repeats)
    result["tokens"] = runs[-1]["tokens"]
    return result


def current_rss_mb() -> float:
    """Resident set of this process now (Linux /proc), for memory growth between two points."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def adapter_rss(backend, adapter: str | None, token: int) -> dict:
    """Resident memory with one adapter used, then with every adapter used: separable bundles should
    grow by about the LoRA weights per adapter, not by a copy of the base model."""
    backend.forward([token], 0, adapter)
    one = current_rss_mb()
    for other in backend.adapters:
        backend.forward([token], 0, other)
    return {"rss_one_adapter_mb": one, "rss_all_adapters_mb": current_rss_mb(), "adapters": len(backend.adapters)}


@dataclass
class Job:
    """One row to measure in a subprocess: a backend (``torch``, a bundle target, or `genai.RUNNER` on a
    bundle's ONNX target) and its settings."""

    backend: str
    prompt: list[int]
    tokenizer: str
    adapter: str | None
    bundle: str | None = None
    model: str | None = None
    adapters_dir: str | None = None
    dtype: str = "float32"
    extra_runs: list[str | None] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def open_job_backend(job: Job):
    """The backend a job names, with threads pinned to ``config.threads``."""
    threads = BenchConfig(**job.config).threads
    if job.backend == "torch":
        import torch

        from memlora.runtime.torch_backend import TorchBackend

        torch.set_num_threads(threads)
        mode = "separable" if job.adapters_dir else "none"
        return TorchBackend(Path(job.model), Path(job.adapters_dir) if job.adapters_dir else None, mode=mode,
                            dtype=getattr(torch, job.dtype))
    from memlora.runtime.registry import open_backend

    pinned = None if job.backend == "coreml" else threads  # Core ML's engines have no thread setting
    return open_backend(job.backend, bundle=Path(job.bundle), threads=pinned)[0]


def run_job(job: Job) -> dict:
    """Measure a job; `extra_runs` are adapters (None = base) whose greedy tokens are also recorded (ours)."""
    from tokenizers import Tokenizer

    config = BenchConfig(**job.config)
    if job.backend == genai.RUNNER:
        return genai.measure(Path(job.bundle), job.adapter, job.prompt, config.threads, config.warmup,
                             config.repeats, config.decode_tokens)
    t0 = time.perf_counter()
    backend = open_job_backend(job)
    load_s = time.perf_counter() - t0
    tokenizer = Tokenizer.from_file(job.tokenizer)  # decode(ids, skip_special_tokens=...) as generate needs
    memory = adapter_rss(backend, job.adapter, job.prompt[0])
    result = measure(backend, tokenizer, job.prompt, job.adapter, config)
    result["memory"] = memory
    result["load_s"] = load_s
    result["extra_tokens"] = {
        str(a): run_once(Timed(backend), tokenizer, job.prompt, a, config.decode_tokens)["tokens"]
        for a in job.extra_runs
    }
    result["rss_mb"] = peak_rss_mb()  # before the profiling backend below adds its own
    if job.backend == "onnx":
        from .profile_onnx import graph_profile, op_shares

        result["per_token"].update(graph_profile(backend, job.prompt, job.adapter, result))
        del backend
        result["per_token"].update(op_shares(Path(job.bundle), job.prompt, job.adapter, config.threads))
    return result


def measure_in_subprocess(job: Job, timeout: float = 3600) -> dict:
    """Run `job` in a fresh python (this interpreter) so its peak RSS and thread pools are its own."""
    import os
    import subprocess
    import tempfile

    from memlora.errors import MemloraError

    from .peers import error_tail

    threads = str(BenchConfig(**job.config).threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with tempfile.TemporaryDirectory(prefix="memlora-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(asdict(job)))
        result = subprocess.run([sys.executable, "-m", __name__, str(job_file), str(out_file)],
                                capture_output=True, text=True, env=env, timeout=timeout)
        if result.returncode != 0 or not out_file.is_file():
            tail = error_tail(result.stderr, 15, result.returncode)
            raise MemloraError(f"measuring {job.backend} {job.bundle or job.dtype} failed:\n{tail}")
        return json.loads(out_file.read_text())


def main(argv: list[str]) -> None:
    job = Job(**json.loads(Path(argv[0]).read_text()))
    Path(argv[1]).write_text(json.dumps(run_job(job)))


if __name__ == "__main__":
    main(sys.argv[1:])
