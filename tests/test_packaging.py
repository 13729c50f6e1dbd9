"""The built wheel carries every data file the package reads at run time, and builds without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "memlora", "export", "runtime_py", "optimum_register",
           "scripts/build_backend.py")
DATA = (
    "memlora/schemas/manifest.schema.json",
    "memlora/schemas/trace.schema.json",
    "memlora/data/demo_conversation.jsonl",
    "memlora/runtime/parity/thresholds.json",
    "memlora/runtime/bench/peer_scripts/peer_common.py",
    *(f"memlora/default_adapters/{op}/{f}" for op in ("extract", "mem_update", "answer")
      for f in ("adapter_config.json", "adapter_model.safetensors", "selection.json")),
)


def sources(tmp_path: Path) -> Path:
    """A copy of what a build reads (setuptools leaves build/ in the source tree)."""
    src = tmp_path / "src"
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    return src


def test_wheel_holds_schemas_thresholds_adapters_and_peer_scripts(tmp_path):
    src = sources(tmp_path)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    log = build.stdout + build.stderr
    assert "BuildBackendWarning" not in log and "SetuptoolsDeprecationWarning" not in log, log
    (wheel,) = tmp_path.glob("memlora-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [d for d in DATA if d not in names]
    assert not missing, missing


def test_the_editable_build_prints_no_setuptools_warning(tmp_path):
    """What `pip install -e .` runs: the PEP 660 hook of the build backend, on a copy of the sources."""
    src = sources(tmp_path)
    code = ("import sys; sys.path.insert(0, 'scripts'); import build_backend; "
            f"print(build_backend.build_editable({str(tmp_path)!r}))")
    build = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=src, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = tmp_path / build.stdout.strip().splitlines()[-1]
    assert wheel.name.startswith("memlora-") and wheel.is_file()
    log = build.stdout + build.stderr
    assert "Warning" not in log and "Editable installation" not in log, log
