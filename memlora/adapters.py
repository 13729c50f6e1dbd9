"""PEFT LoRA adapters on disk: find them, read their config, and refuse one made for another base model.

An adapter directory holds one sub-directory per operation (`extract/`, `mem_update/`, `answer/`), each in
PEFT's format (`adapter_config.json` + `adapter_model.safetensors`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
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
    config: dict = field(repr=False, compare=False)

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
        info = AdapterInfo(name, Path(path), int(cfg["r"]), float(cfg["lora_alpha"]), targets, cfg)
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


def pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override (`rank_pattern`, `alpha_pattern`): a key matches the module path or a
    dotted suffix of it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def check_rank(adapter_dir: Path, cfg: dict, module: str, key: str, rank: int) -> None:
    """Refuse a LoRA tensor whose rank is not the one PEFT builds its module with (`r`, or `rank_pattern`):
    PEFT would fail on it only when it loads, and the scale alpha / r would be the config's, not the file's."""
    want = int(pattern_value(cfg.get("rank_pattern") or {}, module, cfg["r"]))
    if rank != want:
        raise MemloraError(f"{Path(adapter_dir) / 'adapter_config.json'}: r={want} disagrees with the tensor shapes "
                           f"in adapter_model.safetensors ({key} has rank {rank})")


def check_adapter_fits(info: AdapterInfo, base_shapes: dict[str, tuple[int, ...]], model_dir: Path) -> None:
    """Refuse an adapter whose LoRA matrices do not match the base model's layer names and shapes, whose
    rank is not its config's, or that lacks a tensor of a module it targets: PEFT would run a missing
    lora_A or lora_B with freshly initialised values instead of refusing it."""
    try:
        with safe_open(str(info.weights_file), framework="pt") as sf:
            lora = {k: tuple(sf.get_slice(k).get_shape()) for k in sf.keys()}
    except Exception as e:
        raise MemloraError(f"{info.weights_file}: unreadable adapter weights ({e})") from e
    if not lora:
        raise MemloraError(f"{info.weights_file}: adapter holds no tensors")
    found: dict[str, set[str]] = {}
    for key, shape in lora.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module, part = key.removeprefix(_PREFIX).split(".lora_")
        base = base_shapes.get(module + ".weight")
        if base is None:
            raise MemloraError(
                f"{info.weights_file}: adapter for another base model: layer {module!r} "
                f"does not exist in {model_dir}"
            )
        out_f, in_f = base
        is_a = part.startswith("A.")
        if len(shape) != 2 or shape[1 if is_a else 0] != (in_f if is_a else out_f):
            raise MemloraError(
                f"{info.weights_file}: adapter for another base model: {key} has shape {list(shape)}, "
                f"{model_dir} needs {f'[r, {in_f}]' if is_a else f'[{out_f}, r]'}"
            )
        check_rank(info.path, info.config, module, key, shape[0 if is_a else 1])
        found.setdefault(module, set()).add(part[0])
    kinds = {m.rsplit(".", 1)[-1] for m in found} | set(info.targets)
    for name in sorted(base_shapes):
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and any(module == k or module.endswith("." + k) for k in kinds):
            missing = sorted({"A", "B"} - found.get(module, set()))
            if missing:
                raise MemloraError(f"{info.weights_file}: tensor {_PREFIX}{module}.lora_{missing[0]}.weight is missing "
                                   f"(the adapter targets {module.rsplit('.', 1)[-1]}; PEFT would run it with initial values)")


def load_checked_adapters(adapters_dir: Path, model_dir: Path) -> dict[str, AdapterInfo]:
    """Find, read and validate every operation adapter in `adapters_dir` against `model_dir`."""
    shapes = base_weight_shapes(model_dir)
    infos = {n: read_adapter(n, p) for n, p in find_adapters(adapters_dir).items()}
    for info in infos.values():
        check_adapter_fits(info, shapes, model_dir)
    return infos
