"""`optimum-cli export memlora` is `memlora export`: the installed optimum-cli finds the command in the
`optimum.commands.register` namespace, lists memlora's options, exports a bundle, and reports errors as
memlora does. The wheel ships the register module and no `__init__.py` of optimum's namespace."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memlora.export.bundle import load_bundle
from tests.test_packaging import sources

BIN = Path(sys.executable).parent
REGISTER = "optimum/commands/register/register_memlora.py"
NAMESPACE_INITS = ("optimum/__init__.py", "optimum/commands/__init__.py", "optimum/commands/register/__init__.py")


def cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run an installed console script of this environment (not an import of the source tree)."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def option_names(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


@pytest.fixture
def export_args(tiny_model, tiny_adapters, tmp_path) -> list[str]:
    return ["--model", str(tiny_model), "--adapters", str(tiny_adapters), "--target", "onnx", "--quant", "fp32",
            "--max-context", "256", "--out", str(tmp_path / "bundle"), "--no-embedder"]


def test_export_help_lists_memlora(tmp_path):
    result = cli("optimum-cli", "export", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+memlora\s", result.stdout, re.M), result.stdout


def test_help_shows_the_options_of_memlora_export(tmp_path):
    ours = cli("optimum-cli", "export", "memlora", "--help", cwd=tmp_path)
    theirs = cli("memlora", "export", "--help", cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert "--no-embedder" in option_names(ours.stdout)
    assert option_names(ours.stdout) == option_names(theirs.stdout)


def test_exports_a_bundle_that_loads(export_args, tmp_path):
    result = cli("optimum-cli", "export", "memlora", *export_args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bundle written to {tmp_path / 'bundle'}" in result.stdout
    bundle = load_bundle(tmp_path / "bundle")
    assert list(bundle.manifest["targets"]) == ["onnx"] and "embedder" not in bundle.manifest


@pytest.mark.parametrize("bad", [["--block-size", "17"], ["--max-context", "many"], ["--bogus"]])
def test_a_bad_option_fails_as_memlora_export_does(bad, export_args, tmp_path):
    ours = cli("optimum-cli", "export", "memlora", *export_args, *bad, cwd=tmp_path)
    theirs = cli("memlora", "export", *export_args, *bad, cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 2, ours.stderr
    assert ours.stderr.replace("optimum-cli export memlora", "memlora export") == theirs.stderr
    assert not (tmp_path / "bundle").exists()


def test_memlora_errors_are_one_line(export_args, tmp_path):
    result = cli("optimum-cli", "export", "memlora", *export_args, "--block-size", "17", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --block-size 17: must be a power of two, at least 16 "
                                                  "(MatMulNBits, torchao and Core ML all quantize in such blocks)"]


def test_wheel_ships_the_register_module_without_namespace_inits(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(sources(tmp_path))], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("memlora-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert REGISTER in names
    assert not names & set(NAMESPACE_INITS)
    assert {n for n in names if n.startswith("optimum/")} == {REGISTER}
