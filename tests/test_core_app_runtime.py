"""`memlora_core_open_with`: the core's pipeline over a runtime the app drives itself (what iOS does with Core ML),
here onnxruntime on the tiny ONNX bundle driven through ctypes callbacks -- its decoder and its embedder -- against
the Python pipeline on the same bundle: the same results, store and answer; and an app failure is the core's
one-line error quoting the app's message.

Run in a fresh interpreter, as tests/test_core_api.py runs the C API."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

from tests import script
from tests.test_core_api import LIBRARY, CoreApi, drive_fresh, error_of

FORWARD = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_int32,
                           ctypes.c_char_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)
EMBED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_int32,
                         ctypes.POINTER(ctypes.c_float), ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)


def app_callback(body):
    """A C callback around `body`: 0, or its exception's text written into the core's message buffer and 1."""
    def call(*args):
        message, size = args[-2], args[-1]
        try:
            body(*args[1:-2])
            return 0
        except Exception as e:  # the app reports any failure to the core as text
            text = str(e).encode()[: size - 1] + b"\0"
            ctypes.memmove(message, text, len(text))
            return 1
    return call


def write(out, values: np.ndarray, n: int) -> None:
    ctypes.memmove(out, np.ascontiguousarray(values, dtype=np.float32).ctypes.data, n * 4)


def drive(bundle: str, store: str) -> dict:
    """Open the ONNX bundle with onnxruntime callbacks, ingest the scripted turns, ask, list; then the errors."""
    from memlora.runtime import onnx_backend, onnx_embedder

    backend = onnx_backend.from_bundle(Path(bundle))
    embedder = onnx_embedder.from_bundle(Path(bundle), verify=False)
    calls = {"forward": 0, "embed": 0}

    def forward(tokens, count, start, adapter, logits, vocab):
        calls["forward"] += 1
        write(logits, backend.forward(tokens[:count], start, adapter.decode() if adapter else None), vocab)

    def embed(ids, count, vector, dim):
        calls["embed"] += 1
        row = np.asarray([ids[:count]], dtype=embedder.dtype)
        write(vector, embedder._run(row, np.ones_like(row))[0], dim)

    def failing(*args):
        raise RuntimeError("Core ML prediction failed: model not loaded\nsecond line")

    api = CoreApi(LIBRARY)
    lib = api.lib
    lib.memlora_core_open_with.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, FORWARD, EMBED, ctypes.c_void_p,
                                           ctypes.POINTER(ctypes.c_void_p)]
    lib.memlora_core_open_with.restype = ctypes.c_void_p
    keep = [FORWARD(app_callback(forward)), EMBED(app_callback(embed)), FORWARD(app_callback(failing))]
    core = api.raw("open_with", bundle, 1, "onnx", keep[0], keep[1], None)
    turns = [{"speaker": t.speaker, "text": t.text, "date": t.date, "turn_id": t.turn_id}
             for _, exchange in script.EXCHANGES for t in exchange]
    out = {"info": api.call("info", core),
           "ingest": api.call("ingest", core, json.dumps({"store": store, "id": "chat", "turns": turns, "window": 2})),
           "ask": api.call("ask", core, json.dumps({"store": store, "question": script.QUESTION})),
           "memories": api.call("memories", core, json.dumps({"store": store, "history": True})), "calls": calls}
    broken = api.raw("open_with", bundle, 0, "onnx", keep[2], keep[1], None)
    out["errors"] = {
        "app": error_of(api, "ask", broken, json.dumps({"store": store, "question": script.QUESTION})),
        "target": error_of(api, "open_with", bundle, 0, "coreml", keep[0], keep[1], None),
        "no_forward": error_of(api, "open_with", bundle, 0, "onnx", FORWARD(), keep[1], None),
    }
    for handle in (core, broken):
        lib.memlora_core_close(handle)
    return out


@pytest.fixture(scope="module")
def app_run(core, onnx_bundle, tmp_path_factory):
    store = tmp_path_factory.mktemp("app-runtime") / "core.sqlite"
    return {**drive_fresh("tests.test_core_app_runtime", onnx_bundle, store), "store": store}


def test_the_pipeline_on_the_apps_runtime_is_the_python_pipeline(app_run, onnx_bundle, tmp_path):
    from memlora.ingest import ingest
    from memlora.prompts import Turn
    from memlora.runtime.registry import open_pipeline
    from memlora.store import MemoryStore

    pipeline = open_pipeline(tmp_path / "py.sqlite", "onnx", onnx_bundle)
    results = ingest(pipeline, [(k, [Turn(t.speaker, t.text, t.date, t.turn_id) for t in ts]) for k, ts in script.EXCHANGES],
                     progress=False)
    answer = pipeline.answer(script.QUESTION)
    assert [(x["key"], x["status"], x["facts"], [(e["event"], e["id"]) for e in x["events"]])
            for x in app_run["ingest"]["exchanges"]] == [(r.key, r.status, r.facts, r.events) for r in results]
    assert app_run["ask"]["answer"] == answer.text == script.ANSWER
    assert [m["id"] for m in app_run["ask"]["memories"]] == [m.id for m in answer.memories]
    core, py = MemoryStore(app_run["store"], read_only=True), MemoryStore(tmp_path / "py.sqlite", read_only=True)
    assert [m.__dict__ for m in core.memories()] == [m.__dict__ for m in py.memories()]
    assert np.abs(core._load()[1] - py._load()[1]).max() < 1e-5
    assert app_run["info"]["backend"] == "onnx" and sorted(app_run["info"]["adapters"]) == ["answer", "extract", "mem_update"]
    assert app_run["calls"]["forward"] > 0 and app_run["calls"]["embed"] > 0


def test_app_failures_are_one_line_errors(app_run, onnx_bundle):
    errors = app_run["errors"]
    assert errors["app"] == "onnx: the app's forward pass failed: Core ML prediction failed: model not loaded"
    assert errors["target"] == f"{onnx_bundle / 'manifest.json'}: no target 'coreml' (has: onnx)"
    assert errors["no_forward"] == "memlora_core_open_with: no forward function for target onnx"
