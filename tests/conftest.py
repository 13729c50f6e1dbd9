"""Session-wide tiny models shared by the tests (built once, in a temporary directory)."""

from __future__ import annotations

import pytest

from tests import tiny


@pytest.fixture(scope="session", autouse=True)
def parity_cache_outside_home(tmp_path_factory):
    """`memlora parity` caches reference outputs under memlora's home by default: the suite's CLI runs keep
    theirs in a temporary directory (`real` tests still read the model from the real home)."""
    import os

    before = os.environ.get("MEMLORA_PARITY_CACHE")
    os.environ["MEMLORA_PARITY_CACHE"] = str(tmp_path_factory.mktemp("parity-cache"))
    yield
    if before is None:
        del os.environ["MEMLORA_PARITY_CACHE"]
    else:
        os.environ["MEMLORA_PARITY_CACHE"] = before


@pytest.fixture(scope="session")
def core():
    """The on-device core's host runner, built once per session by scripts/build_core.sh (incremental: under a
    second when nothing changed)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([str(root / "scripts" / "build_core.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    return root / "build" / "core" / "memlora-core"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Llama (tied embeddings, GQA) with a ChatML tokenizer."""
    return tiny.build_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    """Three random LoRA adapters (extract, mem_update, answer) for `tiny_model`."""
    return tiny.build_adapters(tiny_model, tmp_path_factory.mktemp("tiny-adapters"))


@pytest.fixture(scope="session")
def taught_adapters(tiny_model, tmp_path_factory):
    """Adapters trained so the tiny model performs the scripted conversation of tests/script.py."""
    from transformers import AutoTokenizer

    from tests import script

    out = tmp_path_factory.mktemp("taught-adapters")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for op, examples in script.lessons(tok).items():
        tiny.teach_adapter(tiny_model, out / op, examples, steps=150)
    return out


@pytest.fixture(scope="session")
def embedder():
    from memlora.embed import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT sentence embedder with a WordPiece tokenizer (what the tiny bundles embed with)."""
    return tiny.build_bert(tmp_path_factory.mktemp("tiny-bert"))


def _export_tiny_bundle(target: str, model, adapters, out, embedder):
    """A separable fp32 bundle of `target` with `embedder`, written through the `memlora export` verb as users
    run it."""
    import typer
    from typer.testing import CliRunner

    from memlora.export.command import main

    app = typer.Typer()
    app.command()(main)
    args = ["--model", str(model), "--adapters", str(adapters), "--target", target,
            "--mode", "separable", "--quant", "fp32", "--max-context", "1024", "--out", str(out),
            "--embedder", str(embedder)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture(scope="session")
def onnx_bundle(tiny_model, taught_adapters, tiny_bert, tmp_path_factory):
    """A separable fp32 ONNX bundle of the taught adapters."""
    return _export_tiny_bundle("onnx", tiny_model, taught_adapters, tmp_path_factory.mktemp("bundles") / "tiny-onnx",
                               tiny_bert)


@pytest.fixture(scope="session")
def tiny_locomo(tmp_path_factory):
    """A LoCoMo-format folder with two small conversations (conv-1, conv-2) built on tests/script.py."""
    import json

    from tests import script

    out = tmp_path_factory.mktemp("locomo")
    conv = {"speaker_a": "Caroline", "speaker_b": "Melanie"}
    for n, (_, turns) in enumerate(script.EXCHANGES, 1):
        conv[f"session_{n}_date_time"] = "1:56 pm on 8 May, 2023"
        conv[f"session_{n}"] = [{"speaker": t.speaker, "dia_id": f"D{n}:{k}", "text": t.text} for k, t in enumerate(turns, 1)]
    conv["session_1_observation"] = {"Caroline": [[script.FACT1, "D1:1"]], "Melanie": []}
    conv["session_2_observation"] = {"Caroline": [[script.FACT2, "D2:1"]]}
    conv["qa"] = [
        {"question": script.QUESTION, "answer": script.ANSWER, "evidence": ["D2:1"], "category": 4},
        {"question": "When did Caroline go to a support group?", "answer": "7 May 2023", "evidence": ["D1:1"], "category": 2},
        {"question": "What is Melanie's job?", "adversarial_answer": "Nurse", "evidence": ["D1:2"], "category": 5},
    ]
    for cid in ("conv-1", "conv-2"):
        (out / f"{cid}.json").write_text(json.dumps(conv))
    return out


@pytest.fixture(scope="module")
def one_thread():
    """Many tiny training/decoding steps run fastest on one thread (two threads on two busy cores mostly wait)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def et_bundle(tiny_model, taught_adapters, tiny_bert, tmp_path_factory):
    """A separable fp32 ExecuTorch bundle of the taught adapters."""
    return _export_tiny_bundle("executorch", tiny_model, taught_adapters,
                               tmp_path_factory.mktemp("bundles") / "tiny-executorch", tiny_bert)


@pytest.fixture(scope="session")
def gguf_bundle(tiny_model, taught_adapters, tiny_bert, tmp_path_factory):
    """A separable fp32 GGUF bundle of the taught adapters (no embedder of its own: retrieval runs on torch)."""
    return _export_tiny_bundle("gguf", tiny_model, taught_adapters, tmp_path_factory.mktemp("bundles") / "tiny-gguf",
                               tiny_bert)


@pytest.fixture(scope="session")
def coreml_bundle(tiny_model, taught_adapters, tiny_bert, tmp_path_factory):
    """A separable Core ML bundle of the taught adapters (fp32 is Core ML's fp16)."""
    return _export_tiny_bundle("coreml", tiny_model, taught_adapters, tmp_path_factory.mktemp("bundles") / "tiny-coreml",
                               tiny_bert)
