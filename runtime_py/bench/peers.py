"""Peers: the same model run by other toolchains, each in a virtual environment of its own.

Their pins conflict with ours (optimum-onnx needs transformers<4.58; llama-cpp-python must be built from
its sdist), so every peer gets a venv under ``$MEMLORA_HOME/bench/venvs/<name>`` created on first use and
reused after. A peer is driven by one of our scripts in ``peer_scripts/``, run with that venv's python:
it reads a JSON job (model paths, prompt token ids, settings) and writes one JSON result per artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from memlora.errors import MemloraError
from memlora.model_wheel import shipped_gguf
from memlora.paths import home
from memlora.runtime.gguf_backend import REQUIREMENT as LLAMA_CPP_PYTHON

SCRIPTS = Path(__file__).parent / "peer_scripts"
TORCH = "torch==2.13.0"  # a local CPU wheel; an unpinned torch would pull a multi-GB CUDA build


@dataclass(frozen=True)
class PeerEnv:
    """A venv recipe: pip requirements (installed in order, one pip call per group) and build settings."""

    name: str
    requirements: tuple[tuple[str, ...], ...]
    build_env: tuple[tuple[str, str], ...] = ()


ENVS = {
    "optimum-onnx": PeerEnv("optimum-onnx", (
        (TORCH, "optimum-onnx[onnxruntime]==0.1.0", "transformers==4.57.1", "onnxruntime==1.32.0"),
    )),
    "executorch": PeerEnv("executorch", (
        (TORCH, "executorch==1.5.1", "safetensors"),
    )),
    # PyPI has no wheel for this platform: build from the sdist, only the libraries the bindings load (the
    # `llama` and `llama-common` targets, which the install step copies, and their ggml dependencies; no
    # multimodal library), in a build directory next to the venv (which `venv --clear` leaves alone) so an
    # interrupted or repeated build resumes instead of starting over; no pip wheel cache, which would
    # hand back a wheel built with other settings
    "llama-cpp": PeerEnv("llama-cpp", (
        ("numpy<2.4",),
        ("--no-binary", "llama-cpp-python", "--no-cache-dir", "--config-settings=build-dir={venv}.build",
         "--config-settings=build.targets=llama;llama-common", LLAMA_CPP_PYTHON),
    ), build_env=(("CMAKE_BUILD_PARALLEL_LEVEL", "2"),
                  # not GGML_NATIVE: -march=native turns on ggml's AMX kernels where the CPU lists AMX, and
                  # the quantized models then die with SIGILL in a VM that does not grant AMX tile state
                  ("CMAKE_ARGS", "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                                 "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
                                 "-DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF"))),
    # llama.cpp's own converter scripts, with the versions its requirements-convert_hf_to_gguf.txt pins
    "llama-cpp-convert": PeerEnv("llama-cpp-convert", (
        (TORCH, "transformers==4.57.6", "numpy~=2.2.6", "sentencepiece>=0.1.98,<0.3.0", "protobuf>=4.21.0,<5.0.0",
         "safetensors", "pyyaml", "tqdm", "requests"),
    )),
}


def venv_root() -> Path:
    return home() / "bench" / "venvs"


def venv_python(name: str) -> Path:
    return venv_root() / name / "bin" / "python"


def ensure_venv(name: str, log=print) -> Path:
    """The python of peer venv `name`, creating it first if needed (a stamp file marks a complete venv)."""
    env = ENVS[name]
    root = venv_root() / name
    stamp = root / "memlora-peer.json"
    want = {"requirements": [list(g) for g in env.requirements]}
    if env.build_env:  # a changed build setting rebuilds the venv too
        want["build_env"] = [list(kv) for kv in env.build_env]
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return venv_python(name)
    log(f"creating peer venv {root} (first use; building can take minutes)")
    root.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--clear", str(root)], root)
    pip_env = {**os.environ, **dict(env.build_env)}
    for group in env.requirements:
        args = [a.replace("{venv}", str(root)) for a in group]
        _run([str(root / "bin" / "python"), "-m", "pip", "install", "-q", *args], root, pip_env)
    stamp.write_text(json.dumps(want))
    return venv_python(name)


def error_tail(output: str, lines: int, returncode: int | None = None) -> str:
    """The last `lines` lines of a failed process's output without warnings (exporters print hundreds,
    each followed by an indented source line, which would push the error itself out of the tail), and
    how it ended when a signal killed it (a native crash such as SIGILL prints nothing)."""
    import signal

    ending = ""
    if returncode is not None and returncode < 0:
        ending = f"killed by {signal.Signals(-returncode).name}"
    kept, skip_next = [], False
    for line in output.strip().splitlines():
        if "Warning" in line or "warnings.warn" in line:
            skip_next = True
            continue
        if skip_next and line.startswith("  "):
            skip_next = False
            continue
        skip_next = False
        kept.append(line)
    return "\n".join(kept[-lines:] + ([ending] if ending else []))


def _run(cmd: list[str], where: Path, env: dict | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = error_tail(result.stderr or result.stdout, 15, result.returncode)
        raise MemloraError(f"{where}: `{' '.join(cmd[:6])} ...` failed:\n{tail}")


def run_peer(name: str, script: str, job: dict, timeout: float = 3600) -> list[dict]:
    """Run `peer_scripts/<script>` in venv `name` on `job`; returns the list of result rows it wrote."""
    python = ensure_venv(name)
    with tempfile.TemporaryDirectory(prefix="memlora-peer-") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": str(job.get("threads", 2)), "PYTHONNOUSERSITE": "1"}
        env.pop("PYTHONPATH", None)
        result = subprocess.run([str(python), str(SCRIPTS / script), str(job_file), str(out_file)],
                                capture_output=True, text=True, env=env, timeout=timeout)
        if result.returncode != 0 or not out_file.is_file():
            tail = error_tail(result.stderr or result.stdout, 20, result.returncode)
            raise MemloraError(f"peer {name} ({script}) failed:\n{tail}")
        return json.loads(out_file.read_text())


def artifacts_root() -> Path:
    return home() / "bench" / "peers"


@dataclass(frozen=True)
class PeerArtifact:
    """One peer row to measure: who, at which precision (its own name for it), which file."""

    peer: str
    precision: str
    precision_class: str
    path: Path
    env: str
    adapter: str | None = None
    """The adapter active in this row (the bench adapter), or None for the base model alone."""
    lora: Path | None = None
    """The GGUF LoRA file a peer applies at run time (llama.cpp); None where the adapter is inside the program."""


def _prepared(name: str, job: dict, want: list[str], out: Path | None = None, script: str | None = None
              ) -> dict[str, Path]:
    """Run a preparation once in venv `name` (`script`, default the peer's own) writing into `out` (default
    ``artifacts_root()/name``); its outputs (name -> path) are recorded in a stamp and reused."""
    out = out or artifacts_root() / name
    stamp = out / "prepared.json"
    if stamp.is_file():
        done = {k: Path(v) for k, v in json.loads(stamp.read_text()).items()}
        if all(k in done and done[k].is_file() for k in want):
            return done
    out.mkdir(parents=True, exist_ok=True)
    rows = run_peer(name, script or SCRIPTS_FOR_ENV[name], {**job, "out_dir": str(out)})
    done = {r["name"]: Path(r["path"]) for r in rows}
    stamp.write_text(json.dumps({k: str(v) for k, v in done.items()}))
    return done


SCRIPTS_FOR_ENV = {"optimum-onnx": "optimum_onnx_peer.py", "executorch": "executorch_peer.py",
                   "llama-cpp": "llama_cpp_peer.py"}
PEERS = tuple(SCRIPTS_FOR_ENV)


def adapter_digest(adapter_dir: Path) -> str:
    """Keys an artifact made with an adapter, so a retrained adapter is made again."""
    from memlora.checksum import sha256_file

    return sha256_file(adapter_dir / "adapter_model.safetensors")[:16]


def gguf_lora(model_dir: Path, adapter_dir: Path) -> Path:
    """The GGUF LoRA file of one PEFT adapter, made by llama.cpp's own converter (first use only)."""
    done = _prepared("llama-cpp-convert", {"requirement": LLAMA_CPP_PYTHON, "model_dir": str(model_dir),
                                           "adapters": {adapter_dir.name: str(adapter_dir)}},
                     [adapter_dir.name], artifacts_root() / "llama-cpp-lora" / adapter_digest(adapter_dir),
                     "llama_cpp_convert.py")
    return done[adapter_dir.name]


def prepare(peer: str, model_dir: Path, adapter_dir: Path, max_context: int, threads: int, log=print
            ) -> list[PeerArtifact]:
    """Make the peer's artifacts of the model in `model_dir` (first use only) and list them; a peer that
    applies LoRA at run time (llama.cpp) gets rows with the adapter in `adapter_dir` active too."""
    log(f"peer {peer}: preparing artifacts")
    if peer == "optimum-onnx":
        done = _prepared(peer, {"action": "export", "model_dir": str(model_dir)},
                         ["fp32", "int8"])
        return [PeerArtifact("optimum-onnx + onnxruntime", q, q, done[q], peer) for q in ("fp32", "int8")]
    if peer == "executorch":
        job = {"action": "export", "model_dir": str(model_dir), "group_size": 32, "max_seq_length": max_context,
               "max_context_length": max_context}
        modes = {"fp32": None, "8da4w": "8da4w"}
        done = _prepared(peer, {**job, "modes": modes}, list(modes))
        # its LoRA path bakes the adapter into the program: one more program, keyed by the adapter
        lora = _prepared(peer, {**job, "modes": {"8da4w": "8da4w"}, "adapters": {"8da4w": str(adapter_dir)}},
                         ["8da4w"], artifacts_root() / "executorch-lora" / adapter_digest(adapter_dir))
        name = "ExecuTorch export_llm (XNNPACK)"
        return [PeerArtifact(name, "fp32", "fp32", done["fp32"], peer),
                PeerArtifact(name, "8da4w g32", "int4", done["8da4w"], peer),
                PeerArtifact(name, "8da4w g32", "int4", lora["8da4w"], peer, adapter_dir.name)]
    if peer == "llama-cpp":
        source = shipped_gguf(artifacts_root() / peer)
        kinds = {"F32": "fp32", "Q8_0": "int8", "Q4_0": "int4"}
        outputs = {k: str(artifacts_root() / peer / f"{model_dir.name}.{k}.gguf") for k in kinds}
        done = _prepared(peer, {"action": "quantize", "source": str(source), "outputs": outputs, "threads": threads},
                         list(kinds))
        files = [(k, c, done[k]) for k, c in kinds.items()] + [("Q4_1", "int4", source)]
        lora = gguf_lora(model_dir, adapter_dir)
        return [PeerArtifact("llama.cpp", k, c, path, peer, *active) for active in ((), (adapter_dir.name, lora))
                for k, c, path in files]
    raise MemloraError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def measure_peer(artifact: PeerArtifact, settings: dict) -> dict:
    """Time one peer artifact in its venv (a fresh process, so peak RSS is its own)."""
    job = {**settings, "action": "measure", "path": str(artifact.path),
           "lora": None if artifact.lora is None else str(artifact.lora)}
    row = run_peer(artifact.env, SCRIPTS_FOR_ENV[artifact.env], job)[0]
    return {"name": artifact.peer, "precision": artifact.precision, "precision_class": artifact.precision_class,
            "path": str(artifact.path), "adapter": artifact.adapter, "lora": job["lora"], **row}
