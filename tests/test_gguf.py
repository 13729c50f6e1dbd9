"""The GGUF target: what `memlora export --target gguf` writes, run by llama.cpp (llama-cpp-python built from its
sdist by scripts/bootstrap.sh) with each adapter's GGUF LoRA applied at run time, and judged by parity.

The Backend contract over the gguf backend is in tests/test_backend_contract.py with the other runtimes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memlora.bundle_tokenizer import BundleTokenizer
from memlora.errors import MemloraError
from memlora.export import gguf_export
from memlora.export.command import export_bundle
from memlora.runtime.gguf_backend import GgufBackend, from_bundle
from memlora.runtime.parity.run import run_parity
from memlora.runtime.registry import open_backend
from tests import tiny

PROMPT = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 120, 33, 301, 77, 12, 400]


def test_the_bundle_holds_a_base_gguf_and_one_lora_gguf_per_adapter(gguf_bundle):
    import gguf

    manifest = json.loads((gguf_bundle / "manifest.json").read_text())
    entry = manifest["targets"]["gguf"]
    assert entry["graphs"] == {"base": "gguf/model.gguf"} and entry["mode"] == "separable"
    assert set(entry["adapter_files"]) == {"extract", "mem_update", "answer"}
    base = gguf.GGUFReader(gguf_bundle / "gguf/model.gguf")
    assert base.fields["general.type"].contents() == "model"
    assert base.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert {t.tensor_type.name for t in base.tensors} == {"F32"}
    lora = gguf.GGUFReader(gguf_bundle / "gguf/extract.gguf")
    assert lora.fields["general.type"].contents() == "adapter"
    assert lora.fields["adapter.type"].contents() == "lora"
    names = {t.name for t in lora.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.0.attn_q.weight.lora_b" in names
    assert "embedder" not in manifest  # no GGUF embedder yet: retrieval runs on the torch reference


def test_fp32_parity_passes_at_every_level(gguf_bundle, tiny_model, taught_adapters):
    report = run_parity(gguf_bundle, tiny_model, taught_adapters, quick=True)
    t = report["targets"]["gguf"]
    assert t["passed"], t["failures"]
    assert t["tensor"]["max_abs"] < 1e-4 and t["token"]["greedy_exact_rate"] == 1.0
    assert t["task"]["equal_rate"] == 1.0


def test_int8_matches_its_simulated_recipe_to_float_rounding(tiny_model, taught_adapters, tmp_path):
    """Q8_0 weights and activations with fp16 block scales: parity's decoder reference simulates exactly that, so
    the conversion gap is orders of magnitude below the quantization gap (with fp32 scales it was a third)."""
    bundle = export_bundle(tiny_model, taught_adapters, ["gguf"], "separable", "int8", 32, tmp_path / "int8",
                           max_context=512)
    recipe = json.loads((bundle / "manifest.json").read_text())["targets"]["gguf"]["quantization"]
    assert (recipe["scale_rule"], recipe["scale_dtype"], recipe["activations"]) == ("restricted", "fp16", "int8_block")
    report = run_parity(bundle, tiny_model, taught_adapters, quick=True, task=False)
    t = report["targets"]["gguf"]
    assert t["passed"], t["failures"]
    quant, conv = t["gap"]["quantization"]["kl"], t["gap"]["conversion"]["kl"]
    assert conv < quant / 20, (quant, conv)


def test_llama_cpp_tokenizes_text_as_the_bundle_tokenizer_does(gguf_bundle):
    """An app that tokenizes with the GGUF's own vocabulary gets the ids the pipeline uses."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf_bundle / "gguf/model.gguf").encode(), params)
    assert model
    vocab = llama_cpp.llama_model_get_vocab(model)
    ours = BundleTokenizer(gguf_bundle / "tokenizer")
    try:
        for text in ["Caroline went to a support group on 7 May 2023.", "  ADD UPDATE\n\nDELETE  NONE ",
                     '<|im_start|>user\n{"facts": ["Melanie painted a sunrise"]}<|im_end|>\n', "naïve café 12345"]:
            data = text.encode()
            out = (llama_cpp.llama_token * 512)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), out, 512, False, True)
            assert list(out[:n]) == ours.encode(text, add_special_tokens=False), text
            n = llama_cpp.llama_tokenize(vocab, data, len(data), out, 512, True, True)
            assert list(out[:n]) == ours.encode(text), text
    finally:
        llama_cpp.llama_model_free(model)


def test_a_qwen2_model_keeps_its_biases_and_rotation(tmp_path):
    """Qwen2's q/k/v biases go to GGUF bias tensors and its q/k rows keep HF order (llama.cpp rotates halves)."""
    from memlora.runtime.torch_backend import TorchBackend

    model = tiny.build_model(tmp_path / "qwen2", arch="qwen2")
    adapters = tiny.build_adapters(model, tmp_path / "adapters")
    bundle = export_bundle(model, adapters, ["gguf"], "separable", "fp32", 32, tmp_path / "bundle", max_context=256)
    got, _ = open_backend("gguf", bundle)
    want = TorchBackend(model, adapters, mode="separable")
    for adapter in (None, "extract"):
        np.testing.assert_allclose(got.forward(PROMPT, 0, adapter, True), want.forward(PROMPT, 0, adapter, True),
                                   atol=1e-4, rtol=0)


def test_a_truncated_model_file_names_the_file_and_llama_cpps_reason(gguf_bundle, tmp_path):
    broken = tmp_path / "model.gguf"
    broken.write_bytes((gguf_bundle / "gguf/model.gguf").read_bytes()[:5000])
    with pytest.raises(MemloraError) as info:
        GgufBackend(broken, {}, 64)
    assert str(info.value).startswith(f"{broken}: llama.cpp cannot load this GGUF model (")
    assert "no message" not in str(info.value)


def test_an_adapter_of_another_base_is_refused_naming_its_file(gguf_bundle, tmp_path):
    other = tiny.build_model(tmp_path / "wider", hidden_size=96, intermediate_size=192)
    other_adapters = tiny.build_adapters(other, tmp_path / "other-adapters")
    other_bundle = export_bundle(other, other_adapters, ["gguf"], "separable", "fp32", 32, tmp_path / "other",
                                 max_context=64)
    lora = other_bundle / "gguf/extract.gguf"
    with pytest.raises(MemloraError) as info:
        GgufBackend(gguf_bundle / "gguf/model.gguf", {"extract": lora}, 64)
    assert str(info.value).startswith(f"{lora}: llama.cpp cannot apply this LoRA adapter to model.gguf (")
    assert "not a GGUF LoRA file of this base" in str(info.value)


def test_a_bundle_with_a_changed_gguf_file_is_refused_before_llama_cpp_reads_it(gguf_bundle, tmp_path):
    copy = shutil.copytree(gguf_bundle, tmp_path / "bundle")
    with open(copy / "gguf/answer.gguf", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    with pytest.raises(MemloraError, match="answer.gguf"):
        from_bundle(copy)


def test_a_tokenizer_llama_cpp_would_split_differently_is_refused_naming_it(tiny_model, taught_adapters, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    (model / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(MemloraError) as info:
        export_bundle(model, taught_adapters, ["gguf"], "separable", "fp32", 32, tmp_path / "out", max_context=64)
    assert str(info.value).startswith(f"{model / 'tokenizer.json'}: GGUF export knows byte-level BPE tokenizers")
    assert not (tmp_path / "out").exists()


def test_q_and_k_rows_go_back_to_interleaved_pairs():
    """HF's rotate-half rows [h0: x0..x3 | y0..y3] become llama.cpp's pairs (x0 y0 x1 y1 ...)."""
    w = np.arange(16, dtype=np.float32).reshape(16, 1)
    got = gguf_export._meta_order(w, heads=2)[:, 0]
    assert got.tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_the_backend_says_how_to_get_llama_cpp_when_it_is_missing(monkeypatch):
    import builtins

    from memlora.runtime import gguf_backend

    real_import = builtins.__import__

    def no_llama(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(MemloraError, match="needs llama-cpp-python==0.3.36: run scripts/bootstrap.sh"):
        gguf_backend._bindings()


def test_llama_cpp_log_lines_do_not_reach_stderr(gguf_bundle, capfd):
    from_bundle(gguf_bundle).forward(PROMPT, 0, "extract")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("quant_, kind", [("int8", "Q8_0"), ("int4", "Q4_1")])
def test_parity_simulates_exactly_the_weights_the_gguf_file_stores(quant_, kind):
    import gguf
    import torch

    from memlora.export import quant
    from memlora.export.target import TargetRequest

    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * 0.05
    w[3, 7], w[9, 40] = 1.5, -2.0  # outliers, as SmolLM2's weights have
    recipe = gguf_export.own_recipe(TargetRequest(None, {}, "separable", quant_, 32, 64))
    qtype = gguf.GGMLQuantizationType[kind]
    stored = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype)
    np.testing.assert_array_equal(quant.weight(w, recipe).numpy(), stored)
    q8 = gguf.GGMLQuantizationType.Q8_0  # the token embedding (and tied head) of both recipes
    table = gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), q8), q8)
    np.testing.assert_array_equal(quant.linear(w, 8, 32, "restricted", scales16=True).numpy(), table)


def test_the_gguf_adds_the_special_tokens_the_tokenizer_template_adds():
    bos_text = {"post_processor": {"type": "TemplateProcessing", "single": [
        {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}}
    assert gguf_export._added_specials(bos_text) == (True, False)
    plain = {"post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}]}}
    assert gguf_export._added_specials(plain) == (False, False)
    assert gguf_export._added_specials({"post_processor": None}) == (False, False)
