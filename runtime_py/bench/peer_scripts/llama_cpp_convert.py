"""llama.cpp's own converters, run in their own venv: a PEFT LoRA adapter -> a GGUF LoRA file.

``action: convert_lora`` -- fetch the llama-cpp-python sdist the llama.cpp peer is built from (the package
registry is the one place we may download from), unpack its ``vendor/llama.cpp`` converter sources once, and
run ``convert_lora_to_gguf.py --base <model_dir> --outtype f32`` on each adapter. The converter reads the base
model's config for the layout (it permutes LoRA B of q/k into llama.cpp's rotary order, as it does the base
weights) and stores ``lora_alpha``, so llama.cpp scales the adapter by alpha / r exactly as PEFT does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from peer_common import read_job, write_rows

CONVERTER_PARTS = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def converter_sources(job: dict) -> Path:
    """``<out_dir>/llama.cpp``: the converter part of the sdist's vendored llama.cpp (unpacked once)."""
    src = Path(job["out_dir"]) / "llama.cpp"
    if (src / "convert_lora_to_gguf.py").is_file():
        return src
    sdist_dir = Path(job["out_dir"]) / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    job["requirement"], "-d", str(sdist_dir)], check=True)
    sdist = next(sdist_dir.glob("*.tar.gz"))
    tmp = Path(job["out_dir"]) / "llama.cpp.partial"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name.split("/vendor/llama.cpp/", 1)[-1] if "/vendor/llama.cpp/" in m.name else None
            if rel and any(rel == p or rel.startswith(p) for p in CONVERTER_PARTS):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(src)
    return src


def convert_lora(job: dict) -> list[dict]:
    src = converter_sources(job)
    rows = []
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the vendored gguf-py
    for name, adapter_dir in job["adapters"].items():
        out = Path(job["out_dir"]) / f"{name}.lora.f32.gguf"
        result = subprocess.run([sys.executable, str(src / "convert_lora_to_gguf.py"), "--base", job["model_dir"],
                                 "--outtype", "f32", "--outfile", str(out), adapter_dir],
                                capture_output=True, text=True, env=env)
        if result.returncode != 0 or not out.is_file():
            raise SystemExit(f"convert_lora_to_gguf.py {adapter_dir} failed:\n{result.stderr[-3000:]}")
        rows.append({"name": name, "path": str(out)})
    return rows


if __name__ == "__main__":
    job, out = read_job()
    write_rows(out, convert_lora(job))
