"""`memlora ingest` as users run it: a subprocess, killed with SIGKILL mid-run, then resumed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from memlora.store import MemoryStore
from tests import script


def _turns_file(path, repeats: int):
    with path.open("w") as f:
        for i in range(repeats):
            for _, turns in script.EXCHANGES:
                for t in turns:
                    f.write(json.dumps({"speaker": t.speaker, "text": t.text, "date": f"{8 + i} May 2023"}) + "\n")
    return path


def _ingest(args, home, **kw):
    env = {**os.environ, "MEMLORA_HOME": str(home)}
    cmd = [sys.executable, "-m", "memlora", "ingest", *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _consistent(path) -> list[tuple]:
    """Check the store's invariants; return its memories. History replayed must give the memories table."""
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    applied = {k for (k,) in db.execute("SELECT key FROM exchanges WHERE status='applied'")}
    mems: dict[str, str] = {}
    for mid, event, new, exchange in db.execute("SELECT memory_id,event,new_text,exchange FROM history ORDER BY seq"):
        assert exchange in applied, f"history row from an exchange that is not marked applied: {exchange}"
        if event == "DELETE":
            mems.pop(mid)
        else:
            mems[mid] = new
    table = dict(db.execute("SELECT id, text FROM memories").fetchall())
    assert table == mems
    return sorted(table.items())


def test_sigkill_mid_ingest_leaves_store_consistent_and_rerun_continues(tiny_model, taught_adapters, tmp_path):
    turns = _turns_file(tmp_path / "chat.jsonl", repeats=6)
    args = [turns, "--model", tiny_model, "--adapters", taught_adapters, "--window", "2"]
    store = tmp_path / "killed.sqlite"
    proc = _ingest([*args, "--store", store], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if sqlite3.connect(store).execute("SELECT count(*) FROM exchanges").fetchone()[0] >= 2:
                break
        except sqlite3.OperationalError:  # the store is still being created
            pass
        time.sleep(0.05)
    assert proc.poll() is None, f"ingest finished before it could be killed:\n{proc.stdout.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _consistent(store)
    n_done = len(MemoryStore(store).exchanges())
    assert 2 <= n_done < 12

    rerun = _ingest([*args, "--store", store], tmp_path)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert f"{n_done} done_before" in out
    clean = tmp_path / "clean.sqlite"
    full = _ingest([*args, "--store", clean], tmp_path)
    out2, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out2
    assert _consistent(store) == _consistent(clean)
    assert ("m0", script.MERGED) in partial or partial == [("m0", script.FACT1)]


def test_cli_reports_bad_input_clearly(tmp_path):
    bad = tmp_path / "conv.json"
    bad.write_text('{"speaker_a": "A"')
    proc = _ingest([bad, "--store", tmp_path / "s.sqlite"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert f"error: {bad}: cannot read LoCoMo conversation" in out
    help_out = subprocess.run([sys.executable, "-m", "memlora", "ask", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "--bundle" in help_out.stdout
