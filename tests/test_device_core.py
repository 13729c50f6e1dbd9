"""The on-device core (device_core/, C++) through its host runner, against the Python side on the same bundle:
sha256 equal to hashlib, the bundle checks and their one-line errors equal to export/bundle.py's."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST, SCHEMA_VERSION, load_bundle

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="session")
def core() -> Path:
    """The host runner, built once per session by scripts/build_core.sh (incremental: under a second when
    nothing changed)."""
    result = subprocess.run([str(ROOT / "scripts" / "build_core.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    return ROOT / "build" / "core" / "memlora-core"


def run(core: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(core), *map(str, args)], input=stdin, capture_output=True, text=True)


def core_error(core: Path, *args) -> str:
    """The one error line of a failing run (exit code 2, nothing else on stderr)."""
    result = run(core, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


def python_error(bundle: Path) -> str:
    with pytest.raises(MemloraError) as e:
        load_bundle(bundle)
    return str(e.value)


def test_sha256_equals_hashlib(core, tmp_path):
    """Lengths around the 64-byte block and the 56-byte padding edge, and a file longer than a 1 MiB read."""
    rng = random.Random(0)
    files = []
    for size in (0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, (1 << 20) + 7):
        f = tmp_path / f"f{size}"
        f.write_bytes(bytes(rng.randrange(256) for _ in range(size)) if size < 5000 else os.urandom(size))
        files.append(f)
    result = run(core, "sha256", *files)
    assert result.returncode == 0, result.stderr
    got = [line.split("  ", 1) for line in result.stdout.splitlines()]
    assert got == [[hashlib.sha256(f.read_bytes()).hexdigest(), str(f)] for f in files]


def test_verify_accepts_the_bundle(core, et_bundle):
    result = run(core, "verify", "--bundle", et_bundle)
    files = json.loads((et_bundle / MANIFEST).read_text())["files"]
    assert result.returncode == 0 and result.stdout == f"{et_bundle}: ok ({len(files)} files checked)\n"
    assert json.loads(run(core, "version").stdout)["bundle_schema"] == SCHEMA_VERSION


def test_bundle_problems_are_the_python_side_errors(core, et_bundle, tmp_path):
    """A tampered, a missing and an unlisted file, an old and a future schema version: one line naming the
    file, word for word what export/bundle.py says."""
    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())

    def same(expected_file: str) -> None:
        message = core_error(core, "verify", "--bundle", bundle)
        assert message == python_error(bundle) and message.startswith(f"{bundle / expected_file}: ")

    golden = bundle / "golden" / "traces.jsonl"
    original = golden.read_bytes()
    golden.write_bytes(original[:-2] + b"0\n")
    same("golden/traces.jsonl")
    golden.write_bytes(original)
    (bundle / "executorch" / "stray.bin").write_bytes(b"x")
    same("executorch/stray.bin")
    (bundle / "executorch" / "stray.bin").unlink()
    shutil.move(bundle / "tokenizer" / "tokenizer.json", tmp_path / "tokenizer.json")
    same("tokenizer/tokenizer.json")
    shutil.move(tmp_path / "tokenizer.json", bundle / "tokenizer" / "tokenizer.json")
    for version in ("memlora-bundle/1", "memlora-bundle/3"):
        (bundle / MANIFEST).write_text(json.dumps({**manifest, "schema_version": version}))
        same(MANIFEST)
    assert "memlora-bundle/3" not in core_error(core, "verify", "--bundle", bundle).split(": ", 1)[0]
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert run(core, "verify", "--bundle", bundle).returncode == 0
