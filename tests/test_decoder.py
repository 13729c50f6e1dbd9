"""The export-friendly decoder against transformers+peft (fp32, max |delta logits| <= 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from memlora.errors import MemloraError
from memlora.export.decoder import Decoder, DecoderConfig, LoraSlots
from memlora.export.lora import fill_slots, load_adapter, load_adapters, unify_slots
from tests import tiny

TOL = 1e-4
PROMPT = [5, 17, 42, 7, 99, 3, 250, 11, 64, 8, 120, 33]


def hf_logits(model_dir, adapter_dir=None, tokens=PROMPT) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def ours(decoder: Decoder, tokens=PROMPT, chunks=(5, 1, 1, 5)) -> torch.Tensor:
    """Run `tokens` in chunks through the static cache, so prefill and decode steps are both covered."""
    outs, pos = [], 0
    with torch.no_grad():
        for n in chunks:
            chunk = tokens[pos : pos + n]
            outs.append(decoder(torch.tensor([chunk]), torch.arange(pos, pos + len(chunk)))[0])
            pos += len(chunk)
    return torch.cat(outs)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """A tiny Qwen2: q/k/v bias, untied embeddings."""
    return tiny.build_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", tie_word_embeddings=False)


def test_base_matches_transformers_llama(tiny_model):
    dec = Decoder.from_pretrained(tiny_model, max_context=64)
    assert (ours(dec) - hf_logits(tiny_model)).abs().max() <= TOL


def test_base_matches_transformers_qwen2(tiny_qwen):
    dec = Decoder.from_pretrained(tiny_qwen, max_context=64)
    assert dec.config.qkv_bias and not dec.config.tie_embeddings
    assert (ours(dec) - hf_logits(tiny_qwen)).abs().max() <= TOL


def test_each_adapter_matches_peft(tiny_model, tiny_adapters):
    config = DecoderConfig.from_hf(tiny_model, 64)
    adapters = load_adapters(tiny_adapters, config)
    assert list(adapters) == ["extract", "mem_update", "answer"]
    dec = Decoder.from_pretrained(tiny_model, 64, unify_slots(adapters.values()))
    for name, adapter in adapters.items():
        fill_slots(dec, adapter)
        ref = hf_logits(tiny_model, tiny_adapters / name)
        assert (ours(dec) - ref).abs().max() <= TOL, name
        dec.merge_lora()
        assert (ours(dec) - ref).abs().max() <= TOL, f"{name} merged"
        dec.load_base(_hf_state(tiny_model), tiny_model)


def _hf_state(model_dir):
    from memlora.export.decoder import load_hf_state_dict

    return load_hf_state_dict(model_dir)


def test_mixed_rank_alpha_subset_targets_share_one_slot_layout(tiny_qwen, tmp_path):
    """Different ranks, alphas and target sets fit one zero-padded layout with the scale folded into B."""
    a = tiny.build_adapter(tiny_qwen, tmp_path / "a", seed=1, rank=2, alpha=16, targets=("q_proj", "v_proj"))
    b = tiny.build_adapter(tiny_qwen, tmp_path / "b", seed=2, rank=6, alpha=3, targets=("o_proj", "down_proj"))
    config = DecoderConfig.from_hf(tiny_qwen, 64)
    loaded = [load_adapter(a, config), load_adapter(b, config)]
    slots = unify_slots(loaded)
    assert slots == LoraSlots(("q_proj", "v_proj", "o_proj", "down_proj"), 6)
    dec = Decoder.from_pretrained(tiny_qwen, 64, slots)
    for adapter, path in zip(loaded, (a, b)):
        fill_slots(dec, adapter)
        assert (ours(dec) - hf_logits(tiny_qwen, path)).abs().max() <= TOL


def test_hidden_states_per_layer(tiny_model):
    from transformers import AutoModelForCausalLM

    dec = Decoder.from_pretrained(tiny_model, max_context=64)
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        _, hidden = dec(torch.tensor([PROMPT]), torch.arange(len(PROMPT)), return_hidden=True)
        want = ref(torch.tensor([PROMPT]), output_hidden_states=True).hidden_states
    assert len(hidden) == dec.config.num_layers + 1
    for got, exp in zip(hidden[:-1], want[:-1]):  # HF's last entry is after the final norm
        assert (got - exp).abs().max() <= TOL


def test_adapter_for_another_base_is_refused(tiny_model, tmp_path):
    other = tiny.build_model(tmp_path / "wide", hidden_size=96, intermediate_size=160)
    adapter = tiny.build_adapter(other, tmp_path / "adapter", seed=3)
    with pytest.raises(MemloraError, match="adapter_model.safetensors.*another base"):
        load_adapter(adapter, DecoderConfig.from_hf(tiny_model, 64))


def test_unsupported_adapter_config_is_refused(tiny_model, tiny_adapters, tmp_path):
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(tiny_adapters / "answer", bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MemloraError, match="adapter_config.json: use_dora"):
        load_adapter(bad, DecoderConfig.from_hf(tiny_model, 64))


@pytest.mark.real
def test_default_model_matches_transformers():
    from memlora.paths import default_model_dir

    model_dir = default_model_dir()
    dec = Decoder.from_pretrained(model_dir, max_context=128)
    tokens = list(range(100, 164))
    assert (ours(dec, tokens, (40, 1, 1, 22)) - hf_logits(model_dir, tokens=tokens)).abs().max() <= TOL


def test_fused_projections_compute_the_same(tiny_qwen, tmp_path):
    """q/k/v and gate/up fused into one matmul each, LoRA B stored per output chunk: same logits as unfused."""
    adapter_dir = tiny.build_adapter(tiny_qwen, tmp_path / "a", seed=4, rank=3, targets=("k_proj", "up_proj", "o_proj"))
    adapter = load_adapter(adapter_dir, DecoderConfig.from_hf(tiny_qwen, 64))
    dec = Decoder.from_pretrained(tiny_qwen, 64, LoraSlots(("q_proj", "k_proj", "up_proj", "o_proj"), 4))
    dec.fuse_projections()
    assert {n.rsplit(".", 1)[1] for n in dec.lora_modules()} == {"qkv_proj", "gate_up_proj", "o_proj"}
    fill_slots(dec, adapter)
    assert (ours(dec) - hf_logits(tiny_qwen, adapter_dir)).abs().max() <= TOL


@pytest.mark.real
def test_default_model_with_adapter_matches_peft(tmp_path):
    """A rank-16 adapter on all seven projections, scaled to a trained adapter's size (it moves logits by ~3)."""
    from safetensors.torch import load_file, save_file

    from memlora.paths import default_model_dir

    model_dir = default_model_dir()
    path = tiny.build_adapter(model_dir, tmp_path / "answer", seed=7, rank=16, alpha=32)
    weights = path / "adapter_model.safetensors"
    save_file({k: v * 0.2 for k, v in load_file(weights).items()}, weights)
    adapter = load_adapter(path, DecoderConfig.from_hf(model_dir, 128))
    dec = Decoder.from_pretrained(model_dir, 128, unify_slots([adapter]))
    fill_slots(dec, adapter)
    tokens = list(range(100, 164))
    assert (ours(dec, tokens, (40, 1, 1, 22)) - hf_logits(model_dir, path, tokens)).abs().max() <= TOL
