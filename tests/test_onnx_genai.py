"""onnxruntime-genai runs our ONNX bundles as exported: its loader (``genai_config.json``), its tokenizer
(the bundle's tokenizer folder), its multi-LoRA API on our ``.onnx_adapter`` files and its own generation
loop give exactly our ONNX backend's greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime_genai as og
import pytest

from memlora.export.bundle import load_bundle
from memlora.generate import GenerationConfig, generate
from memlora.trace import read_traces


def genai_model(onnx_dir: Path, graph: str | None = None):
    """``og.Model`` on a bundle's onnx folder; `graph` picks another graph of it (a merged adapter's)."""
    config = og.Config(str(onnx_dir))
    if graph is not None:
        config.overlay(json.dumps({"model": {"decoder": {"filename": graph}}}))
    return og.Model(config)


def genai_eos(onnx_dir: Path) -> set[int]:
    """The ids genai's search stops at, as its config lists them."""
    return set(json.loads((onnx_dir / "genai_config.json").read_text())["model"]["eos_token_id"])


def genai_adapters(model, onnx_dir: Path, names) -> og.Adapters:
    adapters = og.Adapters(model)
    for name in names:
        adapters.load(str(onnx_dir / f"{name}.onnx_adapter"), name)
    return adapters


def genai_greedy(model, prompt: list[int], max_new: int, eos: set[int], adapters=None, adapter=None) -> list[int]:
    """onnxruntime-genai's own loop with the config's greedy search, up to eos (not returned) or `max_new`."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + max_new)
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    out = [int(t) for t in generator.get_sequence(0)[len(prompt):]]
    return out[:-1] if out and out[-1] in eos else out


def our_greedy(backend, tokenizer, prompt: list[int], max_new: int, eos: set[int], adapter=None) -> list[int]:
    """Our decode loop on our backend, stopping only where genai can (eos, length: no stop strings)."""
    return generate(backend, tokenizer, prompt, adapter, GenerationConfig(max_new), eos).output_ids


def assert_same_greedy(backend, tokenizer, model, adapters, prompts: list[list[int]], max_new: int,
                       eos: set[int]) -> set[tuple[int, ...]]:
    """Every prompt with no adapter and with each adapter: genai's tokens are ours; returns the outputs seen."""
    seen = set()
    for prompt in prompts:
        for name in (None, *backend.adapters):
            want = our_greedy(backend, tokenizer, prompt, max_new, eos, name)
            assert genai_greedy(model, prompt, max_new, eos, adapters, name) == want, (name, prompt[:8])
            seen.add(tuple(want))
    return seen


def test_genai_reads_the_bundle_config_and_tokenizer(onnx_bundle):
    """The onnx folder is an onnxruntime-genai model folder: its type, eos ids and tokenizer (found through
    ``tokenizer_dir``) are the bundle's, and its tokenizer gives the golden prompts' ids."""
    from tokenizers import Tokenizer

    bundle = load_bundle(onnx_bundle)
    model = genai_model(onnx_bundle / "onnx")
    tokenizer = og.Tokenizer(model)
    assert model.type == bundle.manifest["model"]["architecture"]
    assert set(tokenizer.eos_token_ids) == bundle.eos_ids
    ours = Tokenizer.from_file(str(onnx_bundle / "tokenizer" / "tokenizer.json"))
    for record in read_traces(bundle.golden_file):
        text = ours.decode(record.prompt_ids, skip_special_tokens=False)
        assert list(tokenizer.encode(text)) == record.prompt_ids, record.op


def test_genai_greedy_equals_our_backend_with_each_adapter(onnx_bundle):
    """``og.Adapters`` loads every ``.onnx_adapter`` of the bundle; on every golden prompt, with no adapter and
    with each one, genai's generation loop gives our ONNX backend's tokens."""
    from tokenizers import Tokenizer

    from memlora.runtime.onnx_backend import from_bundle

    bundle = load_bundle(onnx_bundle)
    backend = from_bundle(onnx_bundle)
    model = genai_model(onnx_bundle / "onnx")
    adapters = genai_adapters(model, onnx_bundle / "onnx", backend.adapters)
    tokenizer = Tokenizer.from_file(str(onnx_bundle / "tokenizer" / "tokenizer.json"))
    prompts = [r.prompt_ids for r in read_traces(bundle.golden_file)]
    seen = assert_same_greedy(backend, tokenizer, model, adapters, prompts, bundle.manifest["golden"]["max_new_tokens"],
                              bundle.eos_ids)
    assert len(seen) > len(prompts)  # the adapters change the outputs: genai did apply them


@pytest.mark.real
def test_genai_equals_our_backend_on_the_default_model(tmp_path):
    """SmolLM2-135M with the shipped adapters, exported separable int8 (the demo's bundle): onnxruntime-genai
    and our backend agree on every golden prompt with no adapter and with each adapter."""
    from memlora import prompts
    from memlora.export import bundle, golden, onnx_export
    from memlora.export.decoder import DecoderConfig
    from memlora.export.lora import load_adapters
    from memlora.export.target import TargetRequest
    from memlora.paths import default_model_dir
    from memlora.runtime.onnx_backend import OnnxBackend
    from memlora.session import default_adapters, load_tokenizer

    model_dir = default_model_dir()
    config = DecoderConfig.from_hf(model_dir, 2048)
    request = TargetRequest(model_dir, load_adapters(default_adapters(), config), "separable", "int8", 32, 2048)
    entry = onnx_export.export_target(request, tmp_path)
    bundle.copy_tokenizer(model_dir, tmp_path)
    backend = OnnxBackend({None: tmp_path / entry["graphs"]["base"]},
                          {k: tmp_path / f for k, f in entry["adapter_files"].items()})
    tokenizer = load_tokenizer(model_dir)
    eos = set(bundle.eos_ids(config, tokenizer))
    model = genai_model(tmp_path / "onnx")
    adapters = genai_adapters(model, tmp_path / "onnx", backend.adapters)
    rendered = [prompts.render(tokenizer, golden_prompt[1]) for golden_prompt in golden.golden_messages()]
    assert len(assert_same_greedy(backend, tokenizer, model, adapters, rendered, 48, eos)) > len(rendered)


def test_bench_genai_row_runs_our_bundle_in_its_own_process(onnx_bundle):
    """`memlora bench`'s onnxruntime-genai row: genai's loop on the bundle with the bench adapter, in a
    subprocess as every row; its tokens are our measured row's (up to where ours picks eos, which genai's
    fixed-length run keeps from being picked)."""
    from tokenizers import Tokenizer

    from memlora.runtime.bench import genai
    from memlora.runtime.bench.measure import BENCH_ADAPTER, BenchConfig, Job, measure, measure_in_subprocess
    from memlora.runtime.onnx_backend import from_bundle

    config = BenchConfig(decode_tokens=8, warmup=1, repeats=2, switch_repeats=4)
    prompt = next(read_traces(load_bundle(onnx_bundle).golden_file)).prompt_ids
    tok_file = onnx_bundle / "tokenizer" / "tokenizer.json"
    got = measure_in_subprocess(Job(backend=genai.RUNNER, bundle=str(onnx_bundle), prompt=prompt,
                                    adapter=BENCH_ADAPTER, tokenizer=str(tok_file), config=config.__dict__))
    for key in ("decode_tok_s", "prefill_tok_s", "ttft_ms"):
        assert 0 < got[key]["min"] <= got[key]["median"] <= got[key]["max"], key
    assert got["rss_mb"] > 10 and len(got["tokens"]) == config.decode_tokens
    ours = measure(from_bundle(onnx_bundle), Tokenizer.from_file(str(tok_file)), prompt, BENCH_ADAPTER, config)["tokens"]
    eos = load_bundle(onnx_bundle).eos_ids
    cut = next((i for i, t in enumerate(ours) if t in eos), len(ours))
    assert cut > 0 and got["tokens"][:cut] == ours[:cut]


def test_bench_report_puts_genai_beside_our_row(onnx_bundle, tmp_path):
    """A genai row is judged like ours (agreement with eager fp32, roofline) and against our row of the same
    bundle (``vs_ours``); it is printed beside ours and sets no goal."""
    from memlora.runtime.bench import report, summary
    from memlora.runtime.bench.command import our_artifacts
    from tests.test_bench import TINY, _measured

    art = our_artifacts([onnx_bundle], ["onnx"])[0]
    ref = {"float32": _measured([1, 2, 3, 4], 10.0), "bfloat16": _measured([1, 2, 3, 4], 20.0)}
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64, "num_hidden_layers": 2}
    machine = {"cpu": "x", "cores": 2, "cpu_flags": [], "memory_gib": 1, "os": "Linux", "hostname": "h",
               "load_average_start": [1.0, 1.0, 1.0]}
    result = summary.assemble(machine, 30.0, TINY, [1] * 48, cfg, ref, [{**art, **_measured([1, 2, 3, 5], 40.0)}],
                              [], [{**art, **_measured([1, 2, 3, 4], 20.0)}])
    row = result["genai"][0]
    assert row["agreement"]["first_divergence"] is None and row["roofline_frac"] > 0
    assert row["vs_ours"]["decode"] == pytest.approx(0.5) and row["vs_ours"]["first_divergence"] == 3
    assert all("genai" not in g["detail"] for g in result["goals"])
    report.write_markdown(result, tmp_path / "b.md", None)
    text = (tmp_path / "b.md").read_text()
    assert "| memlora onnx separable | fp32 |" in text
    assert "| onnxruntime-genai (its loop) on memlora onnx separable | fp32 |" in text
