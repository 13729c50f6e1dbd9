"""The onnxruntime-genai row: our ONNX bundle run by onnxruntime-genai's own API and generation loop.

What an app gets that runs the bundle through ``og.Model`` / ``og.Generator`` instead of our backend: the same
graph and ``.onnx_adapter`` files (``og.Adapters``; a merged bundle's adapter graph through a config overlay),
the same prompt ids, the same adapter, the same thread count without spinning; genai's loop picks each token
itself. Timing: a generation's prefill is ``og.Generator`` (it allocates the cache) plus ``append_tokens`` and
the first ``generate_next_token`` (which only picks the token), so TTFT and prefill tok/s include what a
user pays per generation; decode tok/s counts the later ``generate_next_token`` calls. genai stops at eos and
its eos ids cannot be switched off, so each run asks for exactly the bench's token count with
``min_length``, which keeps eos from being picked: its tokens can differ from ours only after a point where
the model would have ended.

`memlora.runtime.bench.measure` runs it in a subprocess of its own, as every row.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from memlora.errors import MemloraError

from .peer_scripts.peer_common import peak_rss_mb, spread

RUNNER = "onnxruntime-genai"


def open_model(bundle: Path, adapter: str | None, threads: int):
    """genai's model of a bundle's ONNX target with `adapter` ready: (model, adapters or None)."""
    import onnxruntime_genai as og

    from memlora.export.bundle import load_bundle

    entry = load_bundle(bundle, verify=False).target("onnx")
    if "genai_config" not in entry:
        raise MemloraError(f"{bundle}: its ONNX target has no genai_config.json; re-export it with `memlora export`")
    folder = bundle / Path(entry["genai_config"]).parent
    decoder: dict = {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1,
                                         "session.intra_op.allow_spinning": "0"}}
    if adapter in entry["graphs"]:  # a merged bundle: the adapter's own graph
        decoder["filename"] = Path(entry["graphs"][adapter]).name
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": decoder}}))
    model = og.Model(config)
    if adapter not in entry.get("adapter_files", {}):
        return model, None
    adapters = og.Adapters(model)
    adapters.load(str(bundle / entry["adapter_files"][adapter]), adapter)
    return model, adapters


def run_once(model, adapters, adapter: str | None, prompt: list[int], n_new: int) -> dict:
    """One generation of exactly `n_new` tokens by genai's loop: timings and the tokens."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n_new, min_length=len(prompt) + n_new)
    t0 = time.perf_counter()
    generator = og.Generator(model, params)
    if adapters is not None:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(prompt)
    generator.generate_next_token()
    t1 = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
    t2 = time.perf_counter()
    tokens = [int(t) for t in generator.get_sequence(0)[len(prompt):]]
    return {"ttft_ms": (t1 - t0) * 1e3, "prefill_tok_s": len(prompt) / (t1 - t0),
            "decode_tok_s": (len(tokens) - 1) / (t2 - t1) if len(tokens) > 1 else float("nan"),
            "step_ms": (t2 - t1) / max(1, len(tokens) - 1) * 1e3, "tokens": tokens}


def measure(bundle: Path, adapter: str | None, prompt: list[int], threads: int, warmup: int, repeats: int,
            decode_tokens: int) -> dict:
    """Load, warm up, repeat and summarize genai on one bundle, as `measure.measure` does for ours."""
    t0 = time.perf_counter()
    model, adapters = open_model(bundle, adapter, threads)
    load_s = time.perf_counter() - t0
    for _ in range(warmup):
        run_once(model, adapters, adapter, prompt, min(8, decode_tokens))
    runs = [run_once(model, adapters, adapter, prompt, decode_tokens) for _ in range(repeats)]
    result = {key: spread([r[key] for r in runs]) for key in ("decode_tok_s", "prefill_tok_s", "ttft_ms")}
    result["per_token"] = {"step_ms": statistics.median(r["step_ms"] for r in runs)}
    result["tokens"] = runs[-1]["tokens"]
    result["load_s"] = load_s
    result["rss_mb"] = peak_rss_mb()
    return result
