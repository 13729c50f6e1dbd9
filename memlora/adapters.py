"""PEFT LoRA adapters on disk: find them, read their config, and refuse one made for another base model.

An adapter directory holds one sub-directory per operation (`extract/`, `mem_update/`, `answer/`), each in
PEFT's format (`adapter_config.json` + `adapter_model.safetensors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from . import OPERATIONS
from .errors import MemloraError

_PREFIX = "base_model.model."
_UNSUPPORTED = ("use_dora", "modules_to_save", "layers_to_transform", "layers_pattern")


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def weights_file(self) -> Path:
        return self.path / "adapter_model.safetensors"


def find_adapters(adapters_dir: Path, names: tuple[str, ...] = OPERATIONS) -> dict[str, Path]:
    """Map operation name -> adapter directory for the operations present in `adapters_dir`."""
    adapters_dir = Path(adapters_dir)
    if not adapters_dir.is_dir():
        raise MemloraError(f"{adapters_dir}: adapter directory does not exist")
    found = {n: adapters_dir / n for n in names if (adapters_dir / n / "adapter_config.json").is_file()}
    if not found:
        raise MemloraError(
            f"{adapters_dir}: no adapters found (expected sub-directories {', '.join(names)} "
            "each with adapter_config.json and adapter_model.safetensors)"
        )
    return found


def read_config(path: Path) -> dict:
    """A PEFT LoRA `adapter_config.json`, refused with the file named if it is not one every runtime can
    run (another PEFT type, DoRA, extra trained modules, layer subsets, trained biases)."""
    cfg_file = Path(path) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise MemloraError(f"{cfg_file}: cannot read adapter config ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise MemloraError(f"{cfg_file}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r} is not LORA")
    for key in _UNSUPPORTED:
        if cfg.get(key):
            raise MemloraError(f"{cfg_file}: {key}={cfg[key]!r} is not supported")
    if cfg.get("bias", "none") != "none":
        raise MemloraError(f"{cfg_file}: bias={cfg['bias']!r} is not supported (train with bias='none')")
    if "r" not in cfg or "lora_alpha" not in cfg or "target_modules" not in cfg:
        raise MemloraError(f"{cfg_file}: r, lora_alpha and target_modules are required")
    return cfg


def read_adapter(name: str, path: Path) -> AdapterInfo:
    """Rank, alpha and target modules of a PEFT LoRA adapter; its weights file must exist."""
    cfg = read_config(path)
    targets = cfg["target_modules"]
    try:
        targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
        info = AdapterInfo(name, Path(path), int(cfg["r"]), float(cfg["lora_alpha"]), targets)
    except (ValueError, TypeError) as e:
        raise MemloraError(f"{Path(path) / 'adapter_config.json'}: not a valid PEFT LoRA adapter config ({e!r})") from e
    if not info.weights_file.is_file():
        raise MemloraError(f"{info.weights_file}: adapter weights are missing")
    return info


def base_weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a HF safetensors checkpoint, read from headers only."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise MemloraError(f"{model_dir}: no *.safetensors weights found")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    shapes[k] = tuple(sf.get_slice(k).get_shape())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise MemloraError(f"{f}: unreadable safetensors file ({e})") from e
    return shapes


def check_adapter_fits(info: AdapterInfo, base_shapes: dict[str, tuple[int, ...]], model_dir: Path) -> None:
    """Refuse an adapter whose LoRA matrices do not match the base model's layer names and shapes."""
    try:
        with safe_open(str(info.weights_file), framework="pt") as sf:
            lora = {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
    except Exception as e:
        raise MemloraError(f"{info.weights_file}: unreadable adapter weights ({e})") from e
    if not lora:
        raise MemloraError(f"{info.weights_file}: adapter holds no tensors")
    for key, shape in lora.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module = key.removeprefix(_PREFIX).split(".lora_")[0]
        base = base_shapes.get(module + ".weight")
        if base is None:
            raise MemloraError(
                f"{info.weights_file}: adapter for another base model: layer {module!r} "
                f"does not exist in {model_dir}"
            )
        out_f, in_f = base
        if ".lora_A." in key:
            ok, want = shape == (info.rank, in_f), (info.rank, in_f)
        else:
            ok, want = shape == (out_f, info.rank), (out_f, info.rank)
        if not ok:
            raise MemloraError(
                f"{info.weights_file}: adapter for another base model: {key} has shape {list(shape)}, "
                f"{model_dir} needs {list(want)}"
            )


def load_checked_adapters(adapters_dir: Path, model_dir: Path) -> dict[str, AdapterInfo]:
    """Find, read and validate every operation adapter in `adapters_dir` against `model_dir`."""
    shapes = base_weight_shapes(model_dir)
    infos = {n: read_adapter(n, p) for n, p in find_adapters(adapters_dir).items()}
    for info in infos.values():
        check_adapter_fits(info, shapes, model_dir)
    return infos
