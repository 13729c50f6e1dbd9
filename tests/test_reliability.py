"""Bad input, concurrent writers, killed processes and full disks: one clear line, nothing lost.

Each test reproduces a way a user lost data or got a traceback, and asserts the one-line error (exit 2)
or the right result. Disk-full and read-only-media cases mount a small tmpfs, which needs root (as CI has).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from memlora.cli import app
from memlora.errors import MemloraError
from memlora.export.bundle import load_bundle
from memlora.export.command import export_bundle
from memlora.replace import remove_abandoned
from memlora.store import SCHEMA_VERSION, Change, MemoryStore
from tests import script
from tests.test_ingest_cli import _consistent, _ingest, _turns_file


def cli(*args, home) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one `memlora` command, run in-process."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"MEMLORA_HOME": str(home)})
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stdout: str, stderr: str, *needles: str) -> None:
    """Exit 2 and exactly one line on stderr, `error: ...`, holding every needle (progress may be on stdout)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    output = stdout + stderr
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for n in needles:
        assert n in lines[0], output


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def a_store(path, texts=("Caroline went to a support group",), dim: int = 384) -> MemoryStore:
    """A store of `texts` embedded as `dim`-wide vectors (MiniLM's 384 by default, so the pipeline can search it)."""
    s = MemoryStore(path)
    vec = np.ones(dim, np.float32) / np.sqrt(dim)
    s.apply("k0", ["D1:1"], "8 May 2023", list(texts), [Change("ADD", None, t, vec) for t in texts])
    return s


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of the given size (bytes) under tmp_path; unmounted at the end."""
    mounts = []

    def mount(size: int, name: str = "fs"):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "-l", str(d)], check=False)


def fill(directory) -> None:
    """Use up every free byte of the file system holding `directory`."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


# -- export never deletes what it did not write ---------------------------------------------------------------


def test_export_refuses_a_directory_with_a_foreign_manifest(tiny_model, tiny_adapters, tmp_path):
    out = tmp_path / "V"
    (out / "src").mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "my web app"}')
    (out / "precious.txt").write_text("notes")
    code, so, se = cli("export", "--model", tiny_model, "--adapters", tiny_adapters, "--target", "onnx",
                       "--max-context", 64, "--out", out, home=tmp_path)
    assert_one_line_error(code, so, se, str(out), "is not a bundle", "refusing to overwrite")
    assert (out / "precious.txt").read_text() == "notes" and (out / "src").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["V"]


def test_export_refuses_a_bundle_holding_files_of_the_user(onnx_bundle, tiny_model, tiny_adapters, tmp_path):
    out = shutil.copytree(onnx_bundle, tmp_path / "bundle")
    (out / "onnx" / "my-notes.txt").write_text("keep me")
    with pytest.raises(MemloraError, match=r"not a bundle \(holds onnx/my-notes\.txt\)"):
        export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, out, 64)
    assert (out / "onnx" / "my-notes.txt").read_text() == "keep me"


def test_distill_refuses_an_output_directory_it_did_not_write(tmp_path):
    from memlora.distill.select import distill

    out = tmp_path / "adapters"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(MemloraError, match=r"not a distilled adapter \(no selection\.json\)"):
        distill("extract", [], set(), tmp_path, None, out)
    assert (out / "thesis.tex").read_text() == "years of work"


def killed_export(model, adapters, target: str, out, prelude: str = "", kill_at: str | None = None,
                  before_kill: str = "None") -> None:
    """Run `export_bundle` in a child process that `prelude` or the stage `kill_at` kills with SIGKILL (after
    evaluating `before_kill` there)."""
    code = (
        f"import os, pathlib, signal\n{prelude}"
        "from memlora.export.command import export_bundle\n"
        "def stage(name):\n"
        f"    if {kill_at!r} and name.startswith({kill_at!r}):\n"
        f"        {before_kill}\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"export_bundle({str(model)!r}, {str(adapters)!r}, [{target!r}], 'separable', 'fp32', 32, {str(out)!r}, 64,"
        " stage=stage)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


@pytest.mark.parametrize("target", ["onnx", "executorch", "coreml"])
def test_sigkill_during_an_export_keeps_the_old_bundle_and_the_next_one_clears_its_leftovers(
        target, onnx_bundle, tiny_model, tiny_adapters, tmp_path):
    """Killed once every artifact of `target` is written into staging: the old bundle stays whole."""
    out = shutil.copytree(onnx_bundle, tmp_path / "bundle")
    before = (out / "manifest.json").read_text()
    killed_export(tiny_model, tiny_adapters, target, out, kill_at="golden")
    (leftover,) = tmp_path.glob(".bundle.partial-*")
    assert any((leftover / target).iterdir()), "the kill came before the target's files were written"
    assert (out / "manifest.json").read_text() == before
    load_bundle(out)
    export_bundle(tiny_model, tiny_adapters, [target], "separable", "fp32", 32, out, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert list(load_bundle(out).manifest["targets"]) == [target]


def test_a_side_process_that_dies_fails_the_export_in_one_line_and_leaves_nothing(tiny_model, tiny_adapters, tmp_path):
    """The embedder and golden traces are built in a second process; if it is killed (the OOM killer), the
    export says so instead of hanging, and its staging directory goes."""
    import multiprocessing
    import os

    def stage(name: str) -> None:
        if name.startswith("golden traces and embedder"):
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)

    out = tmp_path / "bundle"
    with pytest.raises(MemloraError, match="the process building the embedder and the golden traces died"):
        export_bundle(tiny_model, tiny_adapters, ["onnx"], "separable", "fp32", 32, out, 64, stage=stage)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_export_takes_its_side_process_with_it(tiny_model, tiny_adapters, tmp_path):
    """SIGKILL gives the export no chance to stop its side process: the kernel's parent-death signal does."""
    import os
    import time

    pid_file = tmp_path / "side.pid"
    prelude = ("import multiprocessing\n"
               "def kill_here():\n"
               f"    pathlib.Path({str(pid_file)!r}).write_text(str(multiprocessing.active_children()[0].pid))\n")
    killed_export(tiny_model, tiny_adapters, "onnx", tmp_path / "bundle", prelude, kill_at="onnx: export",
                  before_kill="kill_here()")
    side = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{side}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{side}"), f"side process {side} outlived the killed export"


def test_a_kill_between_the_two_renames_of_a_replacement_is_undone(onnx_bundle, tiny_model, tiny_adapters, tmp_path):
    out = shutil.copytree(onnx_bundle, tmp_path / "bundle")
    before = (out / "manifest.json").read_text()
    prelude = (
        "rename = pathlib.Path.rename\n"
        "def kill_after_moving_the_old_aside(self, target):\n"
        "    rename(self, target)\n"
        "    if '.old-' in str(target):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "pathlib.Path.rename = kill_after_moving_the_old_aside\n"
    )
    killed_export(tiny_model, tiny_adapters, "onnx", out, prelude)
    assert not out.exists()
    remove_abandoned(out)  # what the next export does first
    assert (out / "manifest.json").read_text() == before
    load_bundle(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_disk_full_during_export_is_one_line_and_leaves_nothing(tiny_model, tiny_adapters, small_fs, tmp_path):
    fs = small_fs(256 * 1024)
    out = fs / "bundle"
    code, so, se = cli("export", "--model", tiny_model, "--adapters", tiny_adapters, "--target", "onnx",
                       "--max-context", 64, "--out", out, home=tmp_path)
    assert_one_line_error(code, so, se, str(out), "No space left on device")
    assert list(fs.iterdir()) == []


# -- the store: concurrent writers, read-only readers, versions -----------------------------------------------


def test_two_concurrent_ingests_of_the_same_turns_equal_one_run(tiny_model, taught_adapters, tmp_path):
    turns = _turns_file(tmp_path / "chat.jsonl", repeats=2)
    args = [turns, "--model", tiny_model, "--adapters", taught_adapters, "--window", "2"]
    both = [_ingest([*args, "--store", tmp_path / "shared.sqlite"], tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    assert any("done_before" in o for o in outs), outs
    one = _ingest([*args, "--store", tmp_path / "one.sqlite"], tmp_path)
    assert one.wait(timeout=600) == 0
    assert _consistent(tmp_path / "shared.sqlite") == _consistent(tmp_path / "one.sqlite")
    n = sqlite3.connect(tmp_path / "shared.sqlite").execute("SELECT count(*) FROM history").fetchone()[0]
    assert n == sqlite3.connect(tmp_path / "one.sqlite").execute("SELECT count(*) FROM history").fetchone()[0]


def test_two_concurrent_ingests_of_different_sessions_equal_one_sequential_run(tiny_model, taught_adapters, tmp_path):
    turns = _turns_file(tmp_path / "chat.jsonl", repeats=2)  # two dates: sessions 1 and 2
    args = [turns, "--model", tiny_model, "--adapters", taught_adapters, "--window", "2"]
    shared = tmp_path / "shared.sqlite"
    procs = [_ingest([*args, "--sessions", s, "--store", shared], tmp_path) for s in ("1", "2")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    first = sqlite3.connect(shared).execute("SELECT key FROM exchanges ORDER BY at LIMIT 1").fetchone()[0]
    order = ("1", "2") if ":s1:" in first else ("2", "1")
    seq = tmp_path / "sequential.sqlite"
    for s in order:
        assert _ingest([*args, "--sessions", s, "--store", seq], tmp_path).wait(timeout=600) == 0
    assert _consistent(shared) == _consistent(seq)
    history = "SELECT memory_id, event, new_text, exchange FROM history ORDER BY seq"
    assert sqlite3.connect(shared).execute(history).fetchall() == sqlite3.connect(seq).execute(history).fetchall()


def test_apply_checks_done_inside_its_transaction(tmp_path):
    """A second writer that ran the model for an exchange another writer finished adds nothing."""
    first, second = MemoryStore(tmp_path / "s.sqlite"), MemoryStore(tmp_path / "s.sqlite")
    vec = np.ones(4, np.float32) / 2
    assert first.apply("k", ["D1:1"], "d", ["f"], [Change("ADD", None, "f", vec)]) == ["m0"]
    assert second.apply("k", ["D1:1"], "d", ["f"], [Change("ADD", None, "f", vec)]) is None
    assert not second.record_skipped("k", ["D1:1"], "malformed")
    assert [m.text for m in second.memories()] == ["f"] and len(second.history()) == 1


def test_ask_with_a_mistyped_store_path_creates_nothing(tmp_path):
    code, so, se = cli("ask", "Who?", "--store", tmp_path / "typo" / "sotre.sqlite", home=tmp_path)
    assert_one_line_error(code, so, se, "typo/sotre.sqlite", "no memory store here")
    assert not (tmp_path / "typo").exists()


def foreign_db(path, table: str):
    """Another program's SQLite database (one table); its bytes must survive every memlora verb."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"CREATE TABLE {table}")
        db.commit()
    return path


def test_read_only_verbs_leave_a_foreign_database_untouched(tmp_path):
    other = foreign_db(tmp_path / "another-apps.db", "users (name TEXT)")
    before = digest(other)
    for verb in (["memories"], ["ask", "Who?"]):
        code, so, se = cli(*verb, "--store", other, home=tmp_path)
        assert_one_line_error(code, so, se, str(other), "not a memlora memory store (tables: users)")
    assert digest(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["another-apps.db"]
    assert sqlite3.connect(other).execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_ingest_refuses_a_store_of_another_schema_without_touching_it(tmp_path):
    store = foreign_db(tmp_path / "s.sqlite", "memories (x INTEGER)")
    before = digest(store)
    turns = _turns_file(tmp_path / "chat.jsonl", repeats=1)
    code, so, se = cli("ingest", turns, "--store", store, home=tmp_path)
    assert_one_line_error(code, so, se, str(store), "not a memlora memory store")
    assert digest(store) == before


def test_a_store_of_a_newer_memlora_is_refused(tmp_path):
    store = tmp_path / "s.sqlite"
    a_store(store).db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    for read_only in (False, True):
        with pytest.raises(MemloraError, match=rf"newer memlora \(store schema {SCHEMA_VERSION + 1}"):
            MemoryStore(store, read_only=read_only)


def test_a_store_of_memlora_0_2_is_read_and_gets_its_version(tmp_path):
    store = tmp_path / "s.sqlite"
    a_store(store).db.execute("DELETE FROM meta WHERE key='schema_version'")
    assert [m.text for m in MemoryStore(store, read_only=True).memories()] == ["Caroline went to a support group"]
    assert MemoryStore(store).db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)


def test_a_store_on_read_only_media_can_be_listed(small_fs, tmp_path):
    fs = small_fs(4 * 1024 * 1024)
    a_store(fs / "s.sqlite").close()
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    code, so, se = cli("memories", "--store", fs / "s.sqlite", "--json", home=tmp_path)
    assert code == 0, so + se
    assert [m["text"] for m in json.loads(so)["memories"]] == ["Caroline went to a support group"]


def test_disk_full_during_ingest_is_one_line_and_changes_nothing(tiny_model, taught_adapters, embedder, small_fs):
    from memlora.pipeline import MemoryPipeline
    from memlora.runtime.torch_backend import TorchBackend
    from memlora.session import load_tokenizer

    fs = small_fs(1024 * 1024)
    store = a_store(fs / "s.sqlite")
    before = (store.memories(), store.exchanges(), store.history())
    fill(fs)
    pipe = MemoryPipeline(TorchBackend(tiny_model, taught_adapters), load_tokenizer(tiny_model), store, embedder)
    key, turns = script.EXCHANGES[0]
    with pytest.raises(MemloraError, match=r"s\.sqlite: cannot write the memory store \(database or disk is full\)"):
        pipe.ingest(key, turns)
    after = MemoryStore(fs / "s.sqlite", read_only=True)
    assert (after.memories(), after.exchanges(), after.history()) == before


# -- conversations that cannot be ingested as they are ---------------------------------------------------------


def _locomo(tmp_path, **changes):
    conv = {"speaker_a": "Caroline", "speaker_b": "Melanie", "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [{"speaker": "Caroline", "dia_id": "D1:1", "text": "I went to a support group."}]}
    conv.update(changes)
    path = tmp_path / "conv.json"
    path.write_text(json.dumps({k: v for k, v in conv.items() if v is not None}))
    return path


def _jsonl(tmp_path, *objs):
    path = tmp_path / "turns.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def _raw(name: str, data: bytes):
    """A maker of a file `name` holding `data`, for contents no JSON writer produces."""
    def make(tmp_path):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    return make


BAD_INPUTS = {
    "binary jsonl": (_raw("t.jsonl", b"\xff\xfe\x00\x9c garbage"), [], "t.jsonl: turns file is not UTF-8"),
    "turn without speaker": (lambda p: _locomo(p, session_1=[{"text": "hi"}]), [], "session_1 turn 1: 'speaker'"),
    "session not a list": (lambda p: _locomo(p, session_1={"a": 1}), [], "session_1 must be a list"),
    "no sessions": (lambda p: _locomo(p, session_1=None, session_1_date_time=None), [], "has no sessions"),
    "session of nothing": (lambda p: _locomo(p, session_1=[]), ["--sessions", "1"], "has no sessions"),
    "huge session range": (lambda p: _locomo(p), ["--sessions", "1-300000000"], "no session 300000000 (have 1)"),
    "reversed range": (lambda p: _locomo(p), ["--sessions", "5-2"], "5-2 is an empty range"),
    "missing session": (lambda p: _locomo(p), ["--sessions", "2"], "no session 2"),
    "jsonl wrong types": (lambda p: _jsonl(p, {"speaker": 1, "text": ["x"], "date": "1 May 2023"}), [],
                          "turns.jsonl:1: 'speaker', 'text' missing or not text"),
    "jsonl without date": (lambda p: _jsonl(p, {"speaker": "Ana", "text": "hi"}), [],
                           "turns.jsonl:1: 'date' missing or not text"),
    "jsonl not an object": (lambda p: _jsonl(p, ["Ana", "hi"]), [], "turns.jsonl:1: expected a JSON object"),
    "locomo without date": (lambda p: _locomo(p, session_1_date_time=None), [], "session_1_date_time is missing"),
    "locomo nested too deeply": (_raw("deep.json", b"[" * 100_000), [], "deep.json: cannot read LoCoMo conversation"),
    "jsonl nested too deeply": (_raw("deep.jsonl", b"[" * 100_000), [], "deep.jsonl:1: not JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_conversations_are_one_line_errors_before_any_model_loads(case, tmp_path):
    make, extra, message = BAD_INPUTS[case]
    path = make(tmp_path)
    code, so, se = cli("ingest", path, *extra, "--store", tmp_path / "s.sqlite", "--model", tmp_path / "no-model",
                       home=tmp_path)
    assert_one_line_error(code, so, se, message)
    assert not (tmp_path / "s.sqlite").exists()


def test_an_exchange_longer_than_the_context_is_skipped_and_ingest_moves_on(tiny_model, taught_adapters, tmp_path):
    turns = [{"speaker": t.speaker, "text": t.text, "date": "8 May 2023"} for _, ts in script.EXCHANGES for t in ts]
    turns.insert(0, {"speaker": "Caroline", "text": "word " * 5000, "date": "7 May 2023"})
    path = _jsonl(tmp_path, *turns)
    store = tmp_path / "s.sqlite"
    args = ["ingest", path, "--model", tiny_model, "--adapters", taught_adapters, "--store", store, "--window", "2"]
    code, so, se = cli(*args, home=tmp_path)
    assert code == 0, so + se
    assert f"warning: {path}: turns L1..L1 skipped (longer than the model's context): extract: prompt of" in se
    assert "1 too_long" in so and "applied" in so
    s = MemoryStore(store, read_only=True)
    assert [e["status"] for e in s.exchanges()][0] == "too_long" and s.memories()
    code, so, se = cli(*args, home=tmp_path)
    assert code == 0 and "done_before" in so and "too_long" not in so.split("exchanges:")[1], so + se


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_store_is_refused_on_open_not_mid_read(damage, tmp_path):
    store = a_store(tmp_path / "s.sqlite", texts=[f"fact {i} " * 40 for i in range(100)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    raw = bytearray((tmp_path / "s.sqlite").read_bytes())
    half = len(raw) // 2
    raw = raw[:half] if damage == "truncated" else raw[:half] + bytes(b ^ 0x5A for b in raw[half:half + 4096]) + raw[half + 4096:]
    (tmp_path / "s.sqlite").write_bytes(bytes(raw))
    code, so, se = cli("memories", "--store", tmp_path / "s.sqlite", home=tmp_path)
    assert_one_line_error(code, so, se, "s.sqlite", "malformed")


@pytest.mark.parametrize("option, value, message", [
    ("--block-size", 0, "--block-size 0: must be a power of two"),
    ("--block-size", 48, "--block-size 48: must be a power of two"),
    ("--max-context", 0, "--max-context 0: must be a positive number"),
    ("--target", ",", "no target given"),
])
def test_export_settings_are_checked_before_any_work(option, value, message, tiny_model, tiny_adapters, tmp_path):
    code, so, se = cli("export", "--model", tiny_model, "--adapters", tiny_adapters, "--quant", "int4",
                       option, value, "--out", tmp_path / "b", home=tmp_path)
    assert_one_line_error(code, so, se, message)
    assert not (tmp_path / "b").exists()
