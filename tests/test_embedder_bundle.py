"""The embedder in the bundle: exported for every target from a tiny random BERT (the `tiny_bert` the tiny
bundles carry), run by each runtime's own embedder backend, and judged against the transformers reference."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from memlora.errors import MemloraError

TEXTS = ["Caroline plays the guitar in a band every Friday", "What is the name of Melanie's cat?", "a",
         "Melanie adopted a cat called Luna", "unknownword zzz " * 40]
COSINE = {"onnx": 0.9999, "executorch": 0.9999, "coreml": 0.999}  # fp32, fp32, fp16 (thresholds.json)


@pytest.fixture(params=["onnx", "executorch", "coreml"])
def target_bundle(request):
    fixture = {"onnx": "onnx_bundle", "executorch": "et_bundle", "coreml": "coreml_bundle"}[request.param]
    return request.param, request.getfixturevalue(fixture)


def test_every_target_embeds_and_retrieves_like_the_reference(target_bundle, tiny_bert):
    from memlora.embed import Embedder
    from memlora.export.bundle import load_bundle
    from memlora.runtime.parity.embedder import embedder_level
    from memlora.runtime.parity.prompts import GOLDEN
    from memlora.runtime.registry import open_embedder

    name, bundle_dir = target_bundle
    bundle = load_bundle(bundle_dir)
    section = bundle.manifest["embedder"]
    assert (section["pooling"], section["normalization"], section["dim"], section["max_length"]) == ("mean", "l2", 32, 48)
    assert all(f in bundle.manifest["files"] for f in [*section["tokenizer"]["files"], *section["targets"][name]["files"]])
    ref = Embedder(tiny_bert)
    got = open_embedder(name, bundle_dir)
    assert type(got).__module__ == f"memlora.runtime.{name}_embedder"
    ids, mask = got.tokenize(TEXTS)  # the `tokenizers` library alone gives the reference's ids
    expected = ref.tokenizer(TEXTS, padding=True, truncation=True, max_length=48)
    assert ids.tolist() == expected["input_ids"] and mask.tolist() == expected["attention_mask"]
    vectors = got.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    assert np.min(np.sum(vectors * ref.embed(TEXTS), axis=1)) >= COSINE[name]
    level = embedder_level(bundle, name, GOLDEN)
    assert level["cosine_min"] >= COSINE[name] and level["retrieval_agreement"] == 1.0, level
    assert level["queries"] == 9 and level["top_k"] == 5


def test_a_swap_is_a_retrieval_difference_unless_the_reference_ties_it_at_the_targets_precision():
    from memlora.runtime.parity.embedder import TIE, TIE_DEFAULT, agrees

    scores = np.array([0.9, 0.5, 0.4994, 0.1])  # memories 1 and 2 are 6e-4 apart: below fp16's resolution
    assert agrees(scores, [0, 1, 2], [0, 1, 2])
    assert not agrees(scores, [0, 1, 2], [0, 2, 1])
    assert agrees(scores, [0, 1, 2], [0, 2, 1], TIE["fp16"])
    assert not agrees(scores, [0, 1, 2], [1, 0, 2], TIE["fp16"]) and not agrees(scores, [0, 1], [0, 3], TIE["fp16"])
    assert TIE.get("int8", TIE_DEFAULT) == 1e-4


def test_pipeline_on_a_bundle_retrieves_with_the_bundles_embedder(onnx_bundle, tmp_path):
    from memlora.runtime.onnx_embedder import OnnxEmbedder
    from memlora.runtime.registry import open_pipeline

    pipeline = open_pipeline(tmp_path / "store.sqlite", "onnx", onnx_bundle)
    assert isinstance(pipeline.embedder, OnnxEmbedder)


def test_the_onnx_embedder_runs_without_torch(onnx_bundle):
    code = ("import sys; from memlora.runtime.registry import open_embedder; "
            f"v = open_embedder('onnx', {str(onnx_bundle)!r}).embed(['a fact', 'a question?']); "
            "assert v.shape == (2, 32); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_int8_onnx_embedder_is_matmulnbits_and_close(tiny_bert, tmp_path):
    import onnx
    import onnxruntime as ort

    from memlora.embed import Embedder
    from memlora.export import embedder

    source = embedder.read_source(tiny_bert)
    files, recipe, dtype, _ = embedder.export_onnx(embedder.SentenceEncoder(source).eval(), source, "int4", tmp_path)
    assert (recipe.scheme, recipe.bits, recipe.block_size, dtype) == ("int8", 8, 32, "int64")
    ops = {n.op_type for n in onnx.load(str(files[0])).graph.node}
    assert "MatMulNBits" in ops and "MatMul" in ops  # linears quantized; attention's matmuls stay float
    ref = Embedder(tiny_bert)
    batch = ref.tokenizer(TEXTS, padding=True, truncation=True, max_length=48, return_tensors="np")
    got = ort.InferenceSession(str(files[0])).run(None, {"input_ids": batch["input_ids"].astype(np.int64),
                                                         "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
    assert np.min(np.sum(got * ref.embed(TEXTS), axis=1)) >= 0.99


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "model_type 'roberta' is not supported as an embedder (BERT family only"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
])
def test_other_architectures_are_refused_naming_the_file(tiny_bert, tmp_path, change, message):
    from memlora.export.embedder import read_source

    other = tmp_path / "other"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(MemloraError, match="^" + re.escape(f"{other / 'config.json'}: {message}")):
        read_source(other)
    (other / "model.safetensors").unlink()
    with pytest.raises(MemloraError, match="model.safetensors: missing"):
        read_source(other)


def test_a_bundle_without_the_targets_embedder_is_named(onnx_bundle):
    from memlora.runtime.bundle_embedder import open_section

    with pytest.raises(MemloraError, match=r"manifest.json: no coreml embedder \(has: onnx\)"):
        open_section(onnx_bundle, "coreml")


@pytest.mark.real
def test_minilm_embedder_exports_and_agrees(tmp_path):
    """The packaged all-MiniLM-L6-v2 through every target's export function, against transformers."""
    import onnxruntime as ort

    from memlora.embed import Embedder, package_model_dir
    from memlora.export import embedder

    source = embedder.read_source(package_model_dir())
    ref = Embedder(source.path)
    batch = ref.tokenizer(TEXTS, padding=True, truncation=True, max_length=source.max_length, return_tensors="np")
    feed = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    encoder = embedder.SentenceEncoder(source).eval()
    for quant, limit in (("fp32", 0.9999), ("int8", 0.99)):
        (tmp_path / quant).mkdir()
        files, *_ = embedder.export_onnx(encoder, source, quant, tmp_path / quant)
        got = ort.InferenceSession(str(files[0])).run(None, feed)[0]
        assert np.min(np.sum(got * ref.embed(TEXTS), axis=1)) >= limit, quant
