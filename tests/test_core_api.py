"""The core's C API (device_core/api/memlora_core.h), build/core/libmemlora_core.so, called through ctypes as the
apps' JNI and Objective-C++ bridges call it, on the tiny ExecuTorch bundle: open, self-test, one constrained
generation with its device trace, the memory pipeline (ingest typed turns, ask, list memories), and the one-line
errors; and android_demo's JNI shim from a JVM.

The calls run in a fresh Python process: this one has loaded ExecuTorch's Python runtime (the bundle fixture
exports through it), whose kernel registry is not the one libexecutorch.so gives the library."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import script

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "build" / "core" / "libmemlora_core.so"


class CoreApi:
    """ctypes over memlora_core.h: JSON strings in and out, the core's error line raised as RuntimeError."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        err = ctypes.POINTER(ctypes.c_void_p)
        for name, args, result in [
            ("memlora_core_version", [], ctypes.c_void_p),
            ("memlora_core_open", [ctypes.c_char_p, ctypes.c_int, err], ctypes.c_void_p),
            ("memlora_core_close", [ctypes.c_void_p], None),
            ("memlora_core_free", [ctypes.c_void_p], None),
            ("memlora_core_trace_to", [ctypes.c_void_p, ctypes.c_char_p, err], ctypes.c_int),
            *[(f"memlora_core_{f}", [ctypes.c_void_p, err], ctypes.c_void_p) for f in ("info", "selftest")],
            *[(f"memlora_core_{f}", [ctypes.c_void_p, ctypes.c_char_p, err], ctypes.c_void_p)
              for f in ("generate", "ingest", "ask", "memories")],
        ]:
            getattr(lib, name).argtypes, getattr(lib, name).restype = args, result
        self.lib = lib

    def _take(self, pointer: int | None) -> str:
        text = ctypes.string_at(pointer).decode()
        self.lib.memlora_core_free(pointer)
        return text

    def raw(self, name: str, *args):
        """`memlora_core_<name>(*args, &error)` as it returns, or RuntimeError(error)."""
        error = ctypes.c_void_p()
        out = getattr(self.lib, f"memlora_core_{name}")(*[a.encode() if isinstance(a, str) else a for a in args],
                                                         ctypes.byref(error))
        if error.value:
            raise RuntimeError(self._take(error.value))
        return out

    def call(self, name: str, *args) -> dict:
        """A call that returns JSON, parsed."""
        out = self.raw(name, *args)
        assert out, f"memlora_core_{name} returned NULL without a message"
        return json.loads(self._take(out))

    def version(self) -> dict:
        return json.loads(self._take(self.lib.memlora_core_version()))


def error_of(api: CoreApi, name: str, *args) -> str:
    try:
        api.raw(name, *args)
    except RuntimeError as e:
        return str(e)
    raise AssertionError(f"memlora_core_{name} did not fail")


def drive(bundle: str, tampered: str, trace: str) -> dict:
    """Every call the tests check, in one process (run by the `calls` fixture)."""
    api = CoreApi(LIBRARY)
    golden = json.loads((Path(bundle) / "golden" / "traces.jsonl").read_text().splitlines()[0])
    core = api.raw("open", bundle, 1)
    out = {"version": api.version(), "info": api.call("info", core), "selftest": api.call("selftest", core)}
    assert api.raw("trace_to", core, trace) == 0
    request = {"op": golden["op"], "prompt_ids": golden["prompt_ids"]}
    out["generate"] = api.call("generate", core, json.dumps(request))
    assert api.raw("trace_to", core, "") == 0
    store = str(Path(trace).parent / "api.sqlite")
    turns = [{"speaker": t.speaker, "text": t.text, "date": t.date, "turn_id": t.turn_id}
             for _, exchange in script.EXCHANGES for t in exchange]
    out["ingest"] = api.call("ingest", core, json.dumps({"store": store, "id": "chat", "turns": turns, "window": 2}))
    out["ask"] = api.call("ask", core, json.dumps({"store": store, "question": script.QUESTION}))
    out["memories"] = api.call("memories", core, json.dumps({"store": store, "history": True}))
    out["errors"] = {
        "no_budget": error_of(api, "generate", core, json.dumps({**request, "max_new_tokens": 0})),
        "tampered": error_of(api, "open", tampered, 1),
        "unknown_op": error_of(api, "generate", core, json.dumps({**request, "op": "summarize"})),
        "not_json": error_of(api, "generate", core, "{op"),
        "bad_ids": error_of(api, "generate", core, json.dumps({**request, "prompt_ids": "1,2"})),
        "null_handle": error_of(api, "info", None),
        **{f: error_of(api, f, core, json.dumps({"store": "s.sqlite"})) for f in ("ingest", "ask", "memories")},
    }
    api.lib.memlora_core_close(core)
    return out


def drive_fresh(module: str, *args) -> dict:
    """`<module>.drive(*args)` in a fresh interpreter, its JSON result (the library is built by the `core`
    fixture's scripts/build_core.sh)."""
    script = f"import json, sys; from {module} import drive; print(json.dumps(drive(*sys.argv[1:])))"
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def calls(core, et_bundle, tmp_path_factory):
    """`drive` in a fresh interpreter, on the bundle and a tampered copy."""
    tmp = tmp_path_factory.mktemp("core-api")
    tampered = tmp / "tampered"
    shutil.copytree(et_bundle, tampered)
    (tampered / "golden" / "traces.jsonl").open("a").write("\n")
    trace = tmp / "device.jsonl"
    return {**drive_fresh("tests.test_core_api", et_bundle, tampered, trace), "trace": trace, "tampered": tampered}


def golden_records(bundle: Path) -> list[dict]:
    return [json.loads(line) for line in (bundle / "golden" / "traces.jsonl").read_text().splitlines()]


def test_open_reports_the_bundle(calls, et_bundle):
    from memlora.export.bundle import SCHEMA_VERSION

    manifest = json.loads((et_bundle / "manifest.json").read_text())
    info = calls["info"]
    assert calls["version"] == {"api": 2, "bundle_schema": SCHEMA_VERSION, "trace_schema": "memlora-trace/1"}
    assert info["bundle"] == str(et_bundle) and info["backend"] == "executorch"
    assert sorted(info["adapters"]) == ["answer", "extract", "mem_update"]
    assert {op: s["adapter"] for op, s in info["operations"].items()} == \
        {op: s["adapter"] for op, s in manifest["generation"]["operations"].items()}
    assert info["max_context"] == 1024 and info["trace"] is None


def test_selftest_result_is_the_golden_replay(calls, et_bundle):
    report = calls["selftest"]
    golden = golden_records(et_bundle)
    assert report["passed"] and report["decode_tokens_per_second"] > 0
    assert [(r["op"], r["tokens"], r["stop"], r["passed"]) for r in report["records"]] == \
        [(g["op"], len(g["output_ids"]), g["stop_reason"], True) for g in golden]


def test_generate_gives_the_golden_output_and_appends_its_trace(calls, et_bundle):
    """The operation's own budget and constraint (the golden budget is smaller, so the output starts with the
    golden ids)."""
    g = golden_records(et_bundle)[0]
    out = calls["generate"]
    assert out["output_ids"][:len(g["output_ids"])] == g["output_ids"] and out["op"] == g["op"]
    assert out["adapter"] == g["adapter"] and out["prompt_tokens"] == len(g["prompt_ids"])
    assert out["decode_tokens_per_second"] > 0 or out["decode_steps"] == 0
    records = [json.loads(line) for line in calls["trace"].read_text().splitlines()]
    assert [(r["backend"], r["prompt_ids"], r["output_ids"], r["text"]) for r in records] == \
        [("executorch", g["prompt_ids"], out["output_ids"], out["text"])]


def test_errors_are_the_cores_one_line_messages(calls):
    errors = calls["errors"]
    golden = calls["tampered"] / "golden" / "traces.jsonl"
    assert errors["tampered"].startswith(f"{golden}: ") and "sha256" in errors["tampered"]
    assert "summarize" in errors["unknown_op"] and errors["not_json"].startswith("memlora_core_generate request: not JSON")
    assert errors["bad_ids"].startswith("memlora_core_generate request") and "prompt_ids" in errors["bad_ids"]
    assert errors["no_budget"].startswith("memlora_core_generate request") and "max_new_tokens" in errors["no_budget"]
    assert errors["null_handle"] == "memlora_core: no bundle is open (the handle is NULL)"
    assert errors["ingest"].startswith("memlora_core_ingest request") and "turns" in errors["ingest"]
    for f in ("ask", "memories"):
        assert errors[f] == "s.sqlite: no memory store here; run `memlora ingest` first (or pass --store)"
    assert all("\n" not in e for e in errors.values())


def test_the_pipeline_through_the_api(calls):
    """Typed turns in two exchanges of two: the taught adapters ADD, then UPDATE, then answer from the memory."""
    ingest, ask, memories = calls["ingest"], calls["ask"], calls["memories"]
    assert [(x["key"], x["status"], [e["event"] for e in x["events"]]) for x in ingest["exchanges"]] == \
        [(key, "applied", [event]) for (key, _), event in zip(script.EXCHANGES, ("ADD", "UPDATE"))]
    assert ingest["statuses"] == {"applied": 2} and ingest["memories"] == 1
    assert ask["answer"] == script.ANSWER and ask["adapter"] == "answer" and [m["id"] for m in ask["memories"]] == ["m0"]
    assert [m["text"] for m in memories["memories"]] == [script.MERGED]
    assert [(h["event"], h["new_text"]) for h in memories["history"]] == [("ADD", script.FACT1), ("UPDATE", script.MERGED)]


@pytest.mark.skipif(shutil.which("javac") is None, reason="no JDK")
def test_the_jni_shim_runs_under_the_jdk(calls, et_bundle, tmp_path):
    """build/core/libmemlora_jni.so loaded by the natives MemloraCore.kt declares (tests/jni, the same class name):
    the version, a passing self-test, and the core's messages as CoreException."""
    sources = sorted((ROOT / "tests" / "jni" / "org" / "memlora" / "demo").glob("*.java"))
    subprocess.run(["javac", "-d", str(tmp_path), *map(str, sources)], check=True)
    result = subprocess.run(["java", "-cp", str(tmp_path), "org.memlora.demo.MemloraCore",
                             str(ROOT / "build" / "core" / "libmemlora_jni.so"), str(et_bundle), str(calls["tampered"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version, report, ask, tampered = result.stdout.splitlines()
    assert json.loads(version) == calls["version"] and json.loads(report)["passed"]
    assert ask == "error: " + calls["errors"]["ask"] and tampered == "error: " + calls["errors"]["tampered"]
