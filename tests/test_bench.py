"""`memlora bench` pieces on the tiny ONNX bundle: measurement through the decode loop, the roofline
arithmetic, agreement, and the report's keys. No timing assertions: only that figures exist and are sane."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memlora.runtime.bench import bandwidth, report, summary
from memlora.runtime.bench.command import benchmark_prompt, our_artifacts
from memlora.runtime.bench.measure import BenchConfig, Job, measure, measure_in_subprocess

TINY = BenchConfig(prompt_tokens=48, decode_tokens=6, warmup=1, repeats=2, switch_repeats=4)


@pytest.fixture(scope="module")
def onnx_bundle(tiny_model, tiny_adapters, tmp_path_factory):
    """A separable fp32 ONNX bundle of the random tiny adapters (no trained adapters needed to time)."""
    from memlora.export.command import export_bundle

    out = tmp_path_factory.mktemp("bench") / "bundle"
    return export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, out, max_context=256,
                         golden_tokens=8)


@pytest.fixture(scope="module")
def tokenizer(onnx_bundle):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(onnx_bundle / "tokenizer" / "tokenizer.json"))


@pytest.fixture(scope="module")
def prompt(tiny_model):
    from transformers import AutoTokenizer

    return benchmark_prompt(AutoTokenizer.from_pretrained(tiny_model), TINY.prompt_tokens)


def test_prompt_has_exact_length_and_ends_with_the_assistant_turn(tiny_model, prompt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert len(prompt) == TINY.prompt_tokens
    assert tok.decode(prompt[-12:]).endswith("<|im_start|>assistant\n")


def test_measure_runs_the_decode_loop_and_agrees_with_the_reference(onnx_bundle, tiny_adapters, tiny_model,
                                                                     tokenizer, prompt):
    from memlora.runtime.onnx_backend import from_bundle
    from memlora.runtime.torch_backend import TorchBackend

    got = measure(from_bundle(onnx_bundle), tokenizer, prompt, "extract", TINY)
    for key in ("decode_tok_s", "prefill_tok_s", "ttft_ms"):
        s = got[key]
        assert 0 < s["min"] <= s["median"] <= s["max"]
    assert got["switch_ms"] is not None and got["switch_ms"] >= 0
    assert len(got["tokens"]) == TINY.decode_tokens
    ref = measure(TorchBackend(tiny_model, tiny_adapters), tokenizer, prompt, "extract",
                  BenchConfig(**{**TINY.__dict__, "warmup": 0, "repeats": 1}))
    assert summary.agreement(got["tokens"], ref["tokens"], "fp32")["first_divergence"] is None


def test_subprocess_job_reports_rss_and_extra_runs(onnx_bundle, prompt):
    job = Job(backend="onnx", bundle=str(onnx_bundle), prompt=prompt, adapter="answer", extra_runs=[None],
              tokenizer=str(onnx_bundle / "tokenizer" / "tokenizer.json"), config=TINY.__dict__)
    got = measure_in_subprocess(job)
    assert got["rss_mb"] > 10
    memory = got["memory"]
    assert memory["adapters"] == 3 and 10 < memory["rss_one_adapter_mb"] <= memory["rss_all_adapters_mb"] <= got["rss_mb"]
    assert len(got["tokens"]) == len(got["extra_tokens"]["None"]) == TINY.decode_tokens
    step = got["per_token"]  # where a decode step goes, from onnxruntime's profiler
    assert "GroupQueryAttention" in step["op_share"] and sum(step["op_share"].values()) == pytest.approx(1.0)
    assert step["kernels_per_step"] > 2 * 4  # at least the projections and attention of both layers
    assert 0 < step["graph_ms"] <= step["forward_ms"] <= step["step_ms"]
    assert step["decode_loop_overhead_ms"] + step["backend_overhead_ms"] + step["graph_ms"] == pytest.approx(step["step_ms"])
    row = {"target": "onnx", "mode": "separable", "precision": "fp32", "per_token": step}
    # the table names the largest op types by kernel time; which they are on the tiny model depends on load
    largest = max(step["op_share"], key=step["op_share"].get)
    assert f"{largest} {step['op_share'][largest]:.0%}" in report.step_table({"results": [row]})


def test_roofline_arithmetic():
    smollm2 = {"num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "num_hidden_layers": 30}
    # 2 (k and v) x 30 layers x 3 heads x 64 dims x 4 bytes per position
    assert bandwidth.kv_bytes_per_token(smollm2, 100) == 2 * 30 * 3 * 64 * 4 * 100
    assert bandwidth.roofline(30.0, 1.5e8) == pytest.approx(200.0)
    assert bandwidth.read_bandwidth_gbs(mib=16, repeats=2) > 0


def test_onnx_bytes_count_the_embedding_as_one_row(onnx_bundle):
    import onnx
    from onnx import numpy_helper

    graph = onnx_bundle / "onnx" / "base.onnx"
    read, gather_only = bandwidth.onnx_weight_bytes(graph)
    model = onnx.load(str(graph))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    used_elsewhere = {i for n in model.graph.node if n.op_type != "Gather" for i in n.input}
    tables = [arrays[t] for t in gathered & set(arrays) - used_elsewhere if arrays[t].ndim == 2]
    assert tables and gather_only == sum(t.nbytes for t in tables)
    assert read == sum(a.nbytes for a in arrays.values()) - gather_only + sum(t.nbytes // t.shape[0] for t in tables)


def test_first_divergence():
    assert summary.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert summary.first_divergence([1, 5, 3], [1, 2, 3]) == 1
    assert summary.first_divergence([1, 2], [1, 2, 3]) == 2


def _measured(tokens: list[int], decode: float) -> dict:
    spread = lambda v: {"median": v, "min": v * 0.9, "max": v * 1.1}  # noqa: E731
    return {"decode_tok_s": spread(decode), "prefill_tok_s": spread(10 * decode), "ttft_ms": spread(50.0),
            "switch_ms": 0.1, "rss_mb": 300.0, "tokens": tokens, "extra_tokens": {"None": tokens}}


def test_report_has_the_issue_keys(onnx_bundle, tmp_path):
    art = our_artifacts([onnx_bundle], ["onnx"])[0]
    ref = {"float32": _measured([1, 2, 3, 4], 10.0), "bfloat16": _measured([1, 2, 9, 4], 20.0)}
    ours = [{**art, **_measured([1, 2, 3, 5], 40.0)}]
    peer = {"name": "llama.cpp", "precision": "Q8_0", "precision_class": "fp32", "path": str(onnx_bundle / "manifest.json"),
            **_measured([1, 7, 3, 4], 30.0), "size_mb": 1.0}
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "num_hidden_layers": 2}
    result = summary.assemble({"cpu": "x", "cores": 2, "cpu_flags": [], "memory_gib": 1, "os": "Linux",
                               "hostname": "h", "load_average_start": [1.0, 1.0, 1.0]}, 30.0, TINY, [1] * 48, cfg,
                              ref, ours, [peer])
    assert {"machine", "bandwidth_gbs", "reference", "results", "peers"} <= set(result)
    assert result["reference"]["decode_tok_s"] == 10.0
    row = result["results"][0]
    assert {"target", "mode", "precision", "decode_tok_s", "prefill_tok_s", "ttft_ms", "switch_ms", "rss_mb",
            "size_mb", "roofline_frac", "vs_reference"} <= set(row)
    assert row["vs_reference"]["decode_tok_s"] == pytest.approx(4.0)
    assert row["agreement"]["first_divergence"] == 3
    assert row["roofline_frac"] == pytest.approx(40.0 / (30e9 / row["bytes_per_token"]))
    assert row["vs_peers"]["llama.cpp Q8_0"]["decode"] == pytest.approx(40 / 30)
    p = result["peers"][0]
    assert {"name", "precision", "decode_tok_s", "prefill_tok_s", "size_mb"} <= set(p)
    assert p["agreement"]["first_divergence"] == 1
    assert any(g["goal"].startswith("best separable decode") and g["met"] for g in result["goals"])
    report.write_json(result, tmp_path / "r.json")
    report.write_plot(result, tmp_path / "r.png")
    report.write_markdown(result, tmp_path / "b.md", tmp_path / "r.png")
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["target"] == "onnx"
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "| memlora onnx separable | fp32 |" in (tmp_path / "b.md").read_text()


def test_adapter_peer_is_judged_against_the_same_adapter(onnx_bundle, tmp_path):
    """A peer running the bench adapter's LoRA agrees with the adapter reference, counts its LoRA file's bytes,
    and is the peer the decode goal compares with, while the no-adapter rows stay beside it."""
    art = our_artifacts([onnx_bundle], ["onnx"])[0]
    ref = {"float32": {**_measured([1, 2, 3, 4], 10.0), "extra_tokens": {"None": [1, 8, 8, 8]}},
           "bfloat16": _measured([1, 2, 3, 4], 20.0)}
    ours = [{**art, **_measured([1, 2, 3, 4], 40.0)}]
    lora = tmp_path / "extract.lora.f32.gguf"
    lora.write_bytes(b"\0" * 1000)
    common = {"name": "llama.cpp", "precision": "Q8_0", "precision_class": "fp32", "size_mb": 1.0,
              "path": str(onnx_bundle / "manifest.json")}
    base_peer = {**common, **_measured([1, 8, 8, 8], 100.0), "adapter": None, "lora": None}
    lora_peer = {**common, **_measured([1, 2, 3, 9], 30.0), "adapter": "extract",
                 "lora": str(lora)}
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "num_hidden_layers": 2}
    result = summary.assemble({"cpu": "x", "cores": 2, "cpu_flags": [], "memory_gib": 1, "os": "Linux",
                               "hostname": "h", "load_average_start": [1.0, 1.0, 1.0]}, 30.0, TINY, [1] * 48, cfg,
                              ref, ours, [base_peer, lora_peer])
    no_adapter, with_adapter = result["peers"]
    assert no_adapter["adapter"] is None and no_adapter["agreement"]["agree_tokens"] == 4
    assert with_adapter["adapter"] == "extract" and with_adapter["agreement"]["agree_tokens"] == 3
    assert with_adapter["bytes_per_token"] - no_adapter["bytes_per_token"] == 1000
    decode = next(g for g in result["goals"] if g["goal"].startswith("best separable decode"))
    assert decode["value"] == pytest.approx(40 / 30) and decode["met"]  # not 40 / 100: the base peer runs no LoRA
    assert "llama.cpp Q8_0 + extract LoRA" in decode["detail"]
    assert set(result["results"][0]["vs_peers"]) == {"llama.cpp Q8_0", "llama.cpp Q8_0 + extract LoRA"}


def test_peer_error_keeps_the_error_not_the_warnings():
    from memlora.runtime.bench.peers import error_tail

    noise = "x.py:3: FutureWarning: soon gone\n  torch._check_is_size(n)\n" * 50
    out = error_tail("Traceback (most recent call last):\n" + noise + "ValueError: bad shape\n" + noise, 5)
    assert out.splitlines() == ["Traceback (most recent call last):", "ValueError: bad shape"]
    assert error_tail("", 5, -4) == "killed by SIGILL"


def test_rounds_merge_to_the_median_of_medians_and_the_whole_spread():
    one = {"decode_tok_s": {"median": 10.0, "min": 9.0, "max": 11.0}, "switch_ms": 0.2, "rss_mb": 100.0,
           "tokens": [1, 2]}
    two = {**one, "decode_tok_s": {"median": 14.0, "min": 13.0, "max": 20.0}, "switch_ms": 0.4, "rss_mb": 120.0}
    three = {**one, "decode_tok_s": {"median": 12.0, "min": 8.0, "max": 12.5}, "switch_ms": 0.3}
    for key in ("prefill_tok_s", "ttft_ms"):
        for r in (one, two, three):
            r[key] = r["decode_tok_s"]
    merged = summary.merge_rounds([one, two, three])
    assert merged["decode_tok_s"] == {"median": 12.0, "min": 8.0, "max": 20.0}
    assert merged["switch_ms"] == 0.3 and merged["rss_mb"] == 120.0 and merged["tokens"] == [1, 2]
    assert summary.merge_rounds([one]) is one


def test_bench_runs_every_row_in_each_round_in_alternating_order(onnx_bundle, tiny_model, tiny_adapters):
    from memlora.runtime.bench.command import run_bench

    lines: list[str] = []
    result = run_bench([onnx_bundle], tiny_model, tiny_adapters, peer_names=(),
                       config=BenchConfig(**{**TINY.__dict__, "rounds": 2}), log=lines.append)
    order = [line.split(" ", 2)[2] for line in lines if line.startswith("round ")]
    rows = ["reference: eager PyTorch float32", "reference: eager PyTorch bfloat16"]
    assert order[:2] == rows and order[-2:] == rows[::-1] and len(order) == 2 * (len(order) // 2)
    row = result["results"][0]
    lo, hi = row["decode_tok_s_range"]
    assert lo <= row["decode_tok_s"] <= hi and result["settings"]["rounds"] == 2


def test_peak_rss_is_the_row_s_own_not_the_driver_s():
    """A measured process reports its own peak, not the bench driver's size (Linux keeps ru_maxrss over exec)."""
    import subprocess
    import sys

    ballast = np.ones(800_000_000 // 8)  # the driver holds 800 MB
    code = "from memlora.runtime.bench.measure import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert ballast.sum() > 0 and 10 < child < 400
