"""Options and adapters that were silently accepted, ignored or refused late: each is now one line, up front.

Every bad input gives exit code 2 and one `error: ...` line naming the file (or option) and the problem.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import typer
from safetensors.torch import load_file, save_file

from memlora.adapters import load_checked_adapters
from memlora.cli import app
from memlora.errors import MemloraError
from memlora.export.decoder import DecoderConfig
from memlora.export.lora import load_adapter
from memlora.runtime.torch_backend import TorchBackend
from tests.test_reliability import a_store, assert_one_line_error, cli

PREFIX = "base_model.model.model.layers"


def edited_adapters(src, dst, config=None, drop=()):
    """A copy of the adapters in `src` whose `extract` config gets `config` and loses the tensors `drop`."""
    shutil.copytree(src, dst)
    extract = dst / "extract"
    if config:
        cfg_file = extract / "adapter_config.json"
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **config}))
    if drop:
        weights = extract / "adapter_model.safetensors"
        tensors = load_file(weights)
        save_file({k: v for k, v in tensors.items() if k not in drop}, weights)
    return dst


# -- 1. a config whose r disagrees with its tensors ----------------------------------------------------------


@pytest.fixture
def wrong_r(tiny_adapters, tmp_path):
    """Rank-4 tensors under a config that says r=2."""
    return edited_adapters(tiny_adapters, tmp_path / "adapters", config={"r": 2})


def test_a_config_r_that_disagrees_with_the_tensors_is_refused_by_both_checks(tiny_model, wrong_r):
    message = r"extract/adapter_config\.json: r=2 disagrees with the tensor shapes in adapter_model\.safetensors"
    with pytest.raises(MemloraError, match=message) as shared:
        load_checked_adapters(wrong_r, tiny_model)
    with pytest.raises(MemloraError, match=message) as export:
        load_adapter(wrong_r / "extract", DecoderConfig.from_hf(tiny_model, 64))
    assert "another base" not in str(shared.value) + str(export.value)


def test_export_refuses_a_wrong_r_before_any_target_is_built(tiny_model, wrong_r, tmp_path):
    out = tmp_path / "bundle"
    code, stdout, stderr = cli("export", "--model", tiny_model, "--adapters", wrong_r, "--target", "onnx",
                               "--out", out, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, "extract/adapter_config.json", "disagrees with the tensor shapes")
    assert "onnx:" not in stdout and not out.exists()


def test_export_checks_every_target_s_mode_and_quant_before_building_any(tiny_model, tiny_adapters, tmp_path):
    """Core ML takes fp16, ONNX does not: the ONNX refusal must come before the Core ML conversion."""
    out = tmp_path / "bundle"
    code, stdout, stderr = cli("export", "--model", tiny_model, "--adapters", tiny_adapters, "--target", "coreml,onnx",
                               "--quant", "fp16", "--out", out, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, "ONNX export: --quant fp16 is not supported")
    assert "coreml:" not in stdout and not out.exists()


def test_export_checks_the_tokenizer_before_building_anything(tiny_model, tiny_adapters, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "tokenizer.json").write_text("{not json")
    code, stdout, stderr = cli("export", "--model", model, "--adapters", tiny_adapters, "--out", tmp_path / "b",
                               home=tmp_path)
    assert_one_line_error(code, stdout, stderr, f"{model}: cannot load tokenizer")
    assert "onnx:" not in stdout


# -- 2. an adapter missing a LoRA tensor -----------------------------------------------------------------------


@pytest.mark.parametrize("drop, missing", [
    ((f"{PREFIX}.0.self_attn.q_proj.lora_A.weight",), f"{PREFIX}.0.self_attn.q_proj.lora_A.weight"),
    ((f"{PREFIX}.1.mlp.down_proj.lora_B.weight",), f"{PREFIX}.1.mlp.down_proj.lora_B.weight"),
    ((f"{PREFIX}.1.self_attn.v_proj.lora_A.weight", f"{PREFIX}.1.self_attn.v_proj.lora_B.weight"),
     f"{PREFIX}.1.self_attn.v_proj.lora_A.weight"),
])
def test_an_adapter_missing_a_lora_tensor_is_refused_naming_it(tiny_model, tiny_adapters, tmp_path, drop, missing):
    adapters = edited_adapters(tiny_adapters, tmp_path / "adapters", drop=drop)
    message = rf"extract/adapter_model\.safetensors: tensor {re.escape(missing)} is missing"
    with pytest.raises(MemloraError, match=message):
        load_checked_adapters(adapters, tiny_model)
    with pytest.raises(MemloraError, match=message):
        TorchBackend(tiny_model, adapters)


def test_ask_refuses_an_adapter_missing_a_lora_tensor(tiny_model, tiny_adapters, tmp_path):
    adapters = edited_adapters(tiny_adapters, tmp_path / "adapters", drop=(f"{PREFIX}.0.mlp.up_proj.lora_A.weight",))
    a_store(tmp_path / "s.sqlite")
    code, stdout, stderr = cli("ask", "What?", "--store", tmp_path / "s.sqlite", "--model", tiny_model,
                               "--adapters", adapters, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, "extract/adapter_model.safetensors",
                          f"{PREFIX}.0.mlp.up_proj.lora_A.weight is missing")


# -- 3. options a bundle backend would ignore ------------------------------------------------------------------


@pytest.mark.parametrize("verb", [
    ["ask", "What?"],
    ["ingest", "TURNS"],
    ["eval", "locomo", "--data", "LOCOMO", "--json", "JSON"],
])
@pytest.mark.parametrize("option", ["--model", "--adapters"])
def test_model_or_adapters_with_a_bundle_backend_is_refused(onnx_bundle, tiny_locomo, tmp_path, verb, option):
    turns = tmp_path / "turns.jsonl"
    turns.write_text(json.dumps({"speaker": "A", "text": "hi", "date": "8 May 2023"}) + "\n")
    names = {"TURNS": turns, "LOCOMO": tiny_locomo, "JSON": tmp_path / "eval.json"}
    a_store(tmp_path / "s.sqlite")
    store = ["--store", tmp_path / "s.sqlite"] if verb[0] != "eval" else []
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    code, stdout, stderr = cli(*[names.get(a, a) for a in verb], *store, "--backend", "onnx", "--bundle", onnx_bundle,
                               option, corrupt, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, f"{option} {corrupt}", "the bundle carries its own model and adapters")


def test_bundle_without_backend_runs_the_bundle_s_only_target(onnx_bundle, tmp_path):
    """No model is set up in this MEMLORA_HOME: an answer means the ONNX bundle ran, not the torch reference."""
    a_store(tmp_path / "s.sqlite", dim=json.loads((onnx_bundle / "manifest.json").read_text())["embedder"]["dim"])
    code, stdout, stderr = cli("ask", "What did Caroline do?", "--store", tmp_path / "s.sqlite", "--bundle", onnx_bundle,
                               home=tmp_path)
    assert code == 0, stdout + stderr
    assert stdout.strip()


def test_bundle_without_backend_and_several_targets_names_them(onnx_bundle, tmp_path):
    from memlora.runtime.registry import choose_backend

    bundle = tmp_path / "two"
    bundle.mkdir()
    manifest = json.loads((onnx_bundle / "manifest.json").read_text())
    manifest["targets"]["coreml"] = manifest["targets"]["onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemloraError, match=rf"{bundle}: the bundle has targets onnx, coreml: pass --backend"):
        choose_backend(None, bundle, None, None)


def test_torch_backend_with_a_bundle_is_refused(onnx_bundle, tmp_path):
    a_store(tmp_path / "s.sqlite")
    code, stdout, stderr = cli("ask", "What?", "--store", tmp_path / "s.sqlite", "--backend", "torch",
                               "--bundle", onnx_bundle, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, f"--bundle {onnx_bundle}", "the torch backend")


# -- 4, 5. help text -------------------------------------------------------------------------------------------


def _commands(group, path=()):
    """(argv, click command) of every verb, sub-verbs included."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield [*path, name], command


def test_every_verb_s_help_shows_the_defaults_its_help_strings_state():
    from typer.testing import CliRunner

    stated = 0
    for argv, command in _commands(typer.main.get_command(app)):
        shown = " ".join(CliRunner().invoke(app, [*argv, "--help"]).output.split())
        for param in command.params:
            for default in re.findall(r"\[default: [^\]]*\]", getattr(param, "help", None) or ""):
                stated += 1
                assert " ".join(default.split()) in shown, f"memlora {' '.join(argv)} --help: {default} not shown"
    assert stated >= 8


def test_setup_documents_force_and_wheel():
    from typer.testing import CliRunner

    shown = " ".join(CliRunner().invoke(app, ["setup", "--help"]).output.split())
    assert re.search(r"--force rebuild", shown) and re.search(r"--wheel <path> convert", shown), shown


# -- 6. threads reach the bundle runtimes ----------------------------------------------------------------------


def test_threads_reach_the_onnx_sessions(onnx_bundle, tmp_path):
    from memlora.runtime.registry import open_pipeline

    a_store(tmp_path / "s.sqlite")
    pipeline = open_pipeline(tmp_path / "s.sqlite", "onnx", onnx_bundle, threads=1)
    assert {s.get_session_options().intra_op_num_threads for s, _ in pipeline.backend._runs.values()} == {1}


def test_eval_passes_threads_to_the_pipeline(onnx_bundle, tiny_locomo, tmp_path, monkeypatch):
    import memlora.runtime.registry

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise MemloraError("stopped")

    monkeypatch.setattr(memlora.runtime.registry, "open_pipeline", stop)
    code, stdout, stderr = cli("eval", "locomo", "--data", tiny_locomo, "--json", tmp_path / "e.json", "--threads", "3",
                               "--backend", "onnx", "--bundle", onnx_bundle, home=tmp_path)
    assert_one_line_error(code, stdout, stderr, "stopped")
    assert seen["threads"] == 3


def test_a_store_embedded_by_another_embedder_is_one_line_error(onnx_bundle, tmp_path):
    """MiniLM-wide memories searched with the bundle's (tiny) embedder: named, not a numpy traceback."""
    a_store(tmp_path / "s.sqlite", dim=384)
    code, stdout, stderr = cli("ask", "What did Caroline do?", "--store", tmp_path / "s.sqlite", "--bundle", onnx_bundle,
                               home=tmp_path)
    assert_one_line_error(code, stdout, stderr, f"{tmp_path / 's.sqlite'}: its memories were embedded as "
                          "384-dimensional vectors, this embedder gives 32")
