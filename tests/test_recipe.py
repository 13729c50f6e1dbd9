"""The typed quantization recipe, the exporter interface that states it, and the simulation parity runs of it."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
import torch

from memlora.errors import MemloraError
from memlora.export import quant
from memlora.export import target as exporters
from memlora.export.bundle import MANIFEST, SCHEMA_PATH, load_bundle, read_manifest, recognise_bundle
from memlora.export.target import TargetRequest, check_request
from memlora.recipe import ADDED_LATER, QuantRecipe, _choices


def request(mode: str = "separable", quant_: str = "fp32", adapters=None, embedding_int8: bool = False,
            calibration_samples: int = 0, int8_projections=None, model_dir=None) -> TargetRequest:
    return TargetRequest(model_dir, adapters or {}, mode, quant_, 32, 64, embedding_int8, calibration_samples,
                         int8_projections=int8_projections)


def every_recipe():
    for name in exporters.TARGETS:
        exporter = exporters.load(name)
        for mode in exporter.modes:
            for q in exporter.quants:
                yield name, mode, q, exporter.recipe(request(mode, q))


def test_every_accepted_combination_has_a_recipe_the_schema_validates_and_json_round_trips():
    schema = json.loads(SCHEMA_PATH.read_text())
    recipe_schema = {**schema["$defs"]["quant_recipe"], "$defs": schema["$defs"]}
    seen = set()
    for name, mode, q, recipe in every_recipe():
        jsonschema.validate(recipe.to_json(), recipe_schema)
        assert QuantRecipe.from_json(recipe.to_json(), "m") == recipe
        seen.add((name, recipe.scheme))
        if recipe.weights == "linear" and mode == "separable":
            calibrated = exporters.load(name).recipe(request(mode, q, calibration_samples=4))
            assert (calibrated.calibration, calibrated.calibration_samples) == ("gptq", 4)
            jsonschema.validate(calibrated.to_json(), recipe_schema)
            assert QuantRecipe.from_json(calibrated.to_json(), "m") == calibrated
    assert seen == {(t, s) for t in ("onnx", "executorch", "gguf") for s in ("fp32", "int8", "int4")} | \
        {("coreml", s) for s in ("fp16", "int8", "int4", "pal4")}


def test_the_schema_enumerates_exactly_the_recipe_choices():
    props = json.loads(SCHEMA_PATH.read_text())["$defs"]["quant_recipe"]["properties"]
    assert {k: tuple(v["enum"]) for k, v in props.items() if "enum" in v} == _choices()
    required = set(json.loads(SCHEMA_PATH.read_text())["$defs"]["quant_recipe"]["required"])
    assert required == set(QuantRecipe.__dataclass_fields__) - set(ADDED_LATER)  # older bundles lack those


@pytest.mark.parametrize("fields, problem", [
    ({"scheme": "int4", "weights": "linear", "bits": 5, "scale_rule": "max_to_min"}, "2-8 bit codes"),
    ({"scheme": "fp32", "bits": 8}, "float weights take no bits"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "min_max"}, "min_max scale rule is the one "
     "asymmetric rule"),
    ({"scheme": "int8", "weights": "linear", "bits": 8, "scale_rule": "restricted", "symmetric": False},
     "min_max scale rule is the one asymmetric rule"),
    ({"scheme": "int8", "weights": "linear", "bits": 8, "scale_rule": "restricted", "compute": "fp16",
      "scale_dtype": "fp16"}, "fp16 scale storage is for linear codes under fp32 compute"),
    ({"scheme": "int8", "weights": "linear", "bits": 8, "scale_rule": "none"}, "need a scale rule"),
    ({"scheme": "int8", "weights": "linear", "bits": 8, "scale_rule": "restricted", "activations": "int8_block"},
     "act_block is set exactly"),
    ({"scheme": "pal4", "weights": "palette", "bits": 4}, "a palette needs a group size"),
    ({"scheme": "int3"}, "scheme 'int3' is not one of"),
    ({"scheme": "fp32", "calibration": "gptq", "calibration_samples": 4}, "float weights have none"),
    ({"scheme": "pal4", "weights": "palette", "bits": 4, "block_size": 16, "calibration": "gptq",
      "calibration_samples": 4}, "palette weights have none"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "max_to_min", "calibration": "gptq"},
     "calibration_samples is a positive count"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "max_to_min", "calibration_samples": 4},
     "calibration_samples is a positive count"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "half_range", "int8_projections": ("wq",)},
     r"int8_projections \['wq'\] are not projections"),
    ({"scheme": "int8", "weights": "linear", "bits": 8, "scale_rule": "half_range", "int8_projections": ("v_proj",)},
     "widen some projections of a linear recipe with fewer than 8 bits"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "half_range", "int8_projections": ("lm_head",)},
     "names lm_head, which this recipe leaves in float"),
    ({"scheme": "int4", "weights": "linear", "bits": 4, "scale_rule": "half_range", "int8_projections": ["v_proj"]},
     "a tuple of projection names"),
])
def test_an_inconsistent_recipe_is_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        QuantRecipe(op="x", **fields)


def test_a_manifest_recipe_with_unknown_or_missing_fields_names_the_file():
    good = QuantRecipe("fp32", op="MatMul").to_json()
    with pytest.raises(MemloraError, match=r"^B/manifest.json: quantization recipe has unknown \['group_size'\]"):
        QuantRecipe.from_json({**good, "group_size": 32}, "B/manifest.json")
    with pytest.raises(MemloraError, match=r"no \['op'\]"):
        QuantRecipe.from_json({k: v for k, v in good.items() if k != "op"}, "B/manifest.json")
    with pytest.raises(MemloraError, match="B/manifest.json: quantization recipe fp32: float weights take no bits"):
        QuantRecipe.from_json({**good, "bits": 4}, "B/manifest.json")


@pytest.mark.parametrize("name, req, message", [
    ("onnx", request("fused"), "ONNX export: --mode fused is not supported (choose from merged, separable)"),
    ("onnx", request(quant_="pal4"), "ONNX export: --quant pal4 is not supported (choose from fp32, int8, int4)"),
    ("executorch", request(quant_="fp16"), "ExecuTorch export: --quant fp16 is not supported (choose from fp32, int8, int4)"),
    ("executorch", request(quant_="int8-weight-only"), "ExecuTorch export: --quant int8-weight-only is refused: "
     "weight-only linear quantization"),
    ("coreml", request(quant_="int2"), "Core ML export: --quant int2 is not supported (choose from fp16, fp32, int8, int4, pal4)"),
    ("coreml", request(adapters={"base": None}), "Core ML export: an adapter may not be named 'base'"),
    ("onnx", request(embedding_int8=True), "ONNX export: --embedding-int8 is not supported"),
    ("coreml", request(embedding_int8=True), "Core ML export: --embedding-int8 is not supported"),
    ("onnx", request(calibration_samples=4), "ONNX export: --calibrate chooses integer codes; --quant fp32 stores "
     "float weights"),
    ("coreml", request(quant_="pal4", calibration_samples=4), "Core ML export: --calibrate chooses integer codes; "
     "--quant pal4 stores palette weights"),
    ("executorch", request("merged", "int4", calibration_samples=4), "ExecuTorch export: --calibrate needs --mode "
     "separable: --mode merged folds each adapter into the base weights"),
    ("onnx", request(quant_="int4", int8_projections=("v_proj",)), "ONNX export: --int8-projections is not supported"),
    ("executorch", request(quant_="int8", int8_projections=("v_proj",)), "ExecuTorch export: quantization recipe "
     "int8: int8_projections widen some projections"),
    ("executorch", request(quant_="int4", int8_projections=("wq",)), "ExecuTorch export: quantization recipe int4: "
     "int8_projections ['wq'] are not projections"),
    ("gguf", request("merged"), "GGUF export: --mode merged is not supported (choose from separable)"),
    ("gguf", request(quant_="fp16"), "GGUF export: --quant fp16 is refused: this target's float type is F32"),
    ("gguf", request(quant_="int8", calibration_samples=4), "GGUF export: --calibrate is not supported"),
])
def test_one_check_refuses_what_a_target_cannot_export_in_one_style(name, req, message):
    with pytest.raises(MemloraError) as info:
        check_request(exporters.load(name), req)
    assert str(info.value).startswith(message), str(info.value)


def test_every_exporter_accepts_what_it_lists(tiny_model):
    for name, mode, q, _ in every_recipe():
        check_request(exporters.load(name), request(mode, q, model_dir=tiny_model))
    check_request(exporters.load("executorch"), request(embedding_int8=True))
    assert exporters.load("executorch").recipe(request(embedding_int8=True)).embedding_bits == 8


def test_mixed_precision_widens_the_named_projections_only():
    """ExecuTorch int4 keeps k/v, up, down and the head at 8-bit per-channel codes unless asked otherwise; the choice
    is in the manifest's recipe, and `for_projection` is what every packer and the simulation read."""
    mixed = exporters.load("executorch").recipe(request(quant_="int4"))
    assert mixed.int8_projections == ("k_proj", "v_proj", "up_proj", "down_proj", "lm_head")
    assert QuantRecipe.from_json(json.loads(json.dumps(mixed.to_json())), "m") == mixed
    assert mixed.for_projection("layers.3.self_attn.q_proj") is mixed
    wide = mixed.for_projection("layers.3.self_attn.v_proj")
    assert (wide.bits, wide.block_size, wide.activations, wide.scale_rule) == (8, None, "int8_token_asym", "half_range")
    assert mixed.for_projection("lm_head") == wide
    plain = exporters.load("executorch").recipe(request(quant_="int4", int8_projections=()))
    assert plain.int8_projections == () and plain.for_projection("layers.0.self_attn.v_proj") is plain
    assert exporters.load("executorch").recipe(request(quant_="int8")).int8_projections == ()


def test_bytes_a_step_reads_come_from_the_recipe():
    onnx_int4 = exporters.load("onnx").recipe(request(quant_="int4"))
    coreml_pal4 = exporters.load("coreml").recipe(request(quant_="pal4"))
    coreml_fp16 = exporters.load("coreml").recipe(request(quant_="fp32"))
    assert (onnx_int4.weight_bits, onnx_int4.embedding_bits) == (4, 32)  # the Gather stays float
    assert (coreml_pal4.weight_bits, coreml_pal4.embedding_bits) == (4, 4)
    assert (coreml_fp16.scheme, coreml_fp16.weight_bits, coreml_fp16.embedding_bits) == ("fp16", 16, 16)


# -- the simulation against the libraries that define the numerics -----------------------------------------

@pytest.mark.parametrize("bits, group", [(8, None), (4, 32)])
def test_the_torchao_simulation_reproduces_torchao_8da(bits, group):
    """`half_range` weights and per-token asymmetric int8 activations are torchao's numerics, bit for bit (up to
    fp32 summation order) -- what the ExecuTorch exporter hands XNNPACK."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    w = lin.weight.detach().clone()
    x = torch.randn(5, 64) * 3
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, f"int{bits}"),
                                                   weight_granularity=PerGroup(group) if group else PerAxis(0))
    quantize_(lin, config)
    recipe = exporters.load("executorch").recipe(request(quant_=f"int{bits}"))
    with torch.no_grad():
        expected = lin(x)
        simulated = torch.nn.functional.linear(quant.activation(x, recipe), quant.weight(w, recipe))
    assert torch.allclose(simulated, expected, atol=1e-4, rtol=1e-5), (simulated - expected).abs().max()


# Core ML's recipes are checked against coremltools' own compression end to end: test_coreml.py runs each
# compressed program next to the decoder with `quant.quantize_decoder` applied.


# -- bundles of memlora 0.2 --------------------------------------------------------------------------------

def as_old_bundle(onnx_bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(onnx_bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["schema_version"] = "memlora-bundle/1"
    manifest["targets"]["onnx"]["quantization"] = {"scheme": "fp32"}
    (old / MANIFEST).write_text(json.dumps(manifest))
    return old


def test_a_bundle_of_memlora_0_2_is_refused_with_how_to_re_export_it(onnx_bundle, tmp_path):
    old = as_old_bundle(onnx_bundle, tmp_path)
    with pytest.raises(MemloraError, match=r"a bundle of memlora 0\.2 \(memlora-bundle/1\).*re-export it with "
                                           rf"`memlora export \.\.\. --out {old}`"):
        load_bundle(old)
    with pytest.raises(MemloraError, match="memlora 0.2"):
        read_manifest(old)


def test_a_bundle_written_before_calibration_existed_loads_as_uncalibrated(onnx_bundle, tmp_path):
    """memlora 0.4.1 manifests have no calibration keys: their weights were rounded to nearest."""
    old = tmp_path / "old"
    shutil.copytree(onnx_bundle, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for key in ADDED_LATER:
        del manifest["targets"]["onnx"]["quantization"][key]
    (old / MANIFEST).write_text(json.dumps(manifest))
    recipe = load_bundle(old).recipe("onnx")
    assert (recipe.calibration, recipe.calibration_samples) == ("none", 0)
    assert recipe == load_bundle(onnx_bundle).recipe("onnx")


def test_export_replaces_a_bundle_of_memlora_0_2_but_not_one_with_foreign_files(onnx_bundle, tmp_path):
    old = as_old_bundle(onnx_bundle, tmp_path)
    assert recognise_bundle(old) is None
    (old / "notes.txt").write_text("mine")
    assert "notes.txt" in recognise_bundle(old)
