"""The bundle: manifest schema, checksums of every file, refusal of bad bundles, and atomic writing."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from memlora.errors import MemloraError
from memlora.export.bundle import SCHEMA_PATH, load_bundle
from memlora.export.command import export_bundle
from memlora.runtime.onnx_backend import from_bundle
from tests import tiny


@pytest.fixture
def bundle_copy(onnx_bundle, tmp_path):
    return shutil.copytree(onnx_bundle, tmp_path / "bundle")


def test_manifest_carries_the_contract(onnx_bundle, tiny_model):
    manifest = json.loads((onnx_bundle / "manifest.json").read_text())
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
    bundle = load_bundle(onnx_bundle)
    model = manifest["model"]
    assert (model["architecture"], model["num_layers"], model["max_context"]) == ("llama", 2, 1024)
    assert model["special_tokens"]["eos_ids"] == [model["special_tokens"]["tokens"]["<|im_end|>"]]
    assert [a["name"] for a in manifest["adapters"]] == ["extract", "mem_update", "answer"]
    assert set(manifest["prompts"]["templates"]) == {"extract", "mem_update", "answer"}
    onnx = bundle.target("onnx")
    assert onnx["mode"] == "separable" and onnx["quantization"]["scheme"] == "fp32"
    assert set(onnx["adapter_files"]) == {"extract", "mem_update", "answer"}
    files = set(manifest["files"])
    assert set(onnx["files"]) <= files and set(manifest["tokenizer"]["files"]) <= files
    assert manifest["golden"]["file"] in files
    assert files == {p.relative_to(onnx_bundle).as_posix() for p in onnx_bundle.rglob("*")
                     if p.is_file() and p.name != "manifest.json"}


def test_tampered_file_is_refused_by_name(bundle_copy):
    data = bundle_copy / "onnx" / "base.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(MemloraError, match=r"onnx/base\.onnx\.data: sha256 mismatch"):
        load_bundle(bundle_copy)
    with pytest.raises(MemloraError, match=r"onnx/base\.onnx\.data"):
        from_bundle(bundle_copy)


def test_missing_or_unlisted_file_is_refused(bundle_copy):
    (bundle_copy / "onnx" / "answer.onnx_adapter").rename(bundle_copy / "stray.bin")
    with pytest.raises(MemloraError, match=r"answer\.onnx_adapter: listed in the manifest but missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "stray.bin").rename(bundle_copy / "onnx" / "answer.onnx_adapter")
    (bundle_copy / "notes.txt").write_text("x")
    with pytest.raises(MemloraError, match=r"notes\.txt: not listed in the manifest"):
        load_bundle(bundle_copy)


def test_manifest_against_schema_is_checked(bundle_copy):
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"]["special_tokens"]["eos_ids"] = []
    path.write_text(json.dumps(manifest))
    with pytest.raises(MemloraError, match=r"manifest\.json: manifest does not match .* model/special_tokens/eos_ids"):
        load_bundle(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(MemloraError, match=r"manifest\.json: not valid JSON"):
        load_bundle(bundle_copy)


def test_adapter_for_another_base_is_refused_and_nothing_written(tiny_model, tmp_path):
    other = tiny.build_model(tmp_path / "other", hidden_size=32, intermediate_size=64)
    tiny.build_adapters(other, tmp_path / "adapters", names=("answer",))
    out = tmp_path / "bundle"
    with pytest.raises(MemloraError, match=r"answer/adapter_model\.safetensors: .*another base"):
        export_bundle(tiny_model, tmp_path / "adapters", ["onnx"], "separable", "fp32", 32, out, 64)
    assert not out.exists()


class Interrupted(KeyboardInterrupt):
    pass


def _interrupt_at(prefix: str):
    def stage(name: str) -> None:
        if name.startswith(prefix):
            raise Interrupted(name)

    return stage


def test_interrupted_export_leaves_no_bundle(tiny_model, tiny_adapters, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(Interrupted):
        export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, out, 64,
                      stage=_interrupt_at("onnx: adapter mem_update"))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_re_export_keeps_the_old_bundle(onnx_bundle, tiny_model, tiny_adapters, bundle_copy):
    before = (bundle_copy / "manifest.json").read_text()
    with pytest.raises(Interrupted):
        export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, bundle_copy, 64,
                      stage=_interrupt_at("onnx: export"))
    assert (bundle_copy / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]
    load_bundle(bundle_copy)


def test_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tiny_model, tiny_adapters, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(MemloraError, match=r"not a bundle \(no manifest.json\); refusing to overwrite"):
        export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, out, 64)
    assert (out / "keep.txt").read_text() == "precious"
