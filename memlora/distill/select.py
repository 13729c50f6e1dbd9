"""Nested validation: the outer split keeps test conversations out entirely; inside the training
conversations an inner validation split picks rank, learning rate and epochs from a small grid. The
adapter shipped is the grid's best checkpoint (constant learning rate after warm-up, so the checkpoint
after epoch k is exactly a k-epoch run). The choice and every validation score land beside it."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from memlora.errors import MemloraError
from memlora.replace import check_replaceable, only_files, replace_dir, staging

from .teacher import Example
from .train import TARGET_MODULES, Encoded, TrainConfig, encode, train

SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Grid:
    ranks: tuple[int, ...] = (4, 8)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    max_epochs: int = 2
    train_examples: int = 48  # inner-train examples (subsampled so the whole grid fits a CPU budget)
    val_examples: int = 16
    max_len: int = 768


def split_groups(examples: list[Example], val_groups: set[str]) -> tuple[list[Example], list[Example]]:
    """Inner split by conversation: nothing of a validation conversation is trained on."""
    train_set = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    if not train_set or not val:
        raise MemloraError(
            f"inner split left {len(train_set)} training and {len(val)} validation examples "
            f"(validation conversations: {', '.join(sorted(val_groups))})"
        )
    return train_set, val


def _sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def data_mix(examples: list[Example], train_data: list[Encoded], val_data: list[Encoded]) -> dict[str, dict[str, int]]:
    """Per source: examples available, and those trained and validated on (sampled, within the length limit)."""
    mix: dict[str, dict[str, int]] = {}
    for key, items in (("examples", examples), ("train", train_data), ("validation", val_data)):
        for item in items:
            row = mix.setdefault(item.source, {"examples": 0, "train": 0, "validation": 0})
            row[key] += 1
    return mix


def distill(
    op: str,
    examples: list[Example],
    val_groups: set[str],
    model_dir: Path,
    tokenizer,
    out_dir: Path,
    grid: Grid = Grid(),
    base: TrainConfig = TrainConfig(),
    log=print,
) -> dict:
    """Train every grid point, keep the checkpoint with the lowest validation loss, write it atomically to
    `out_dir` with `selection.json` (the choice, all validation scores, the data mix and timing)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    check_replaceable(out_dir, recognise_adapter, "distilled adapter")  # before any training
    inner_train, inner_val = split_groups(examples, val_groups)
    data = encode(tokenizer, _sample(inner_train, grid.train_examples, base.seed), grid.max_len)
    val = encode(tokenizer, _sample(inner_val, grid.val_examples, base.seed + 1), grid.max_len)
    best: dict = {"val_loss": float("inf")}
    points = []
    with staging(out_dir, recognise_adapter, "distilled adapter") as tmp:
        for rank in grid.ranks:
            for lr in grid.lrs:
                cfg = replace(base, rank=rank, lr=lr, epochs=grid.max_epochs)
                log(f"{op}: grid rank={rank} lr={lr:g} ({len(data)} train / {len(val)} validation examples)")

                def keep_best(model, epoch: int, val_loss: float, cfg=cfg) -> None:
                    if val_loss < best["val_loss"]:
                        best.update(val_loss=val_loss, choice=replace(cfg, epochs=epoch))
                        model.save_pretrained(str(tmp), safe_serialization=True)

                _, res = train(model_dir, tokenizer, data, cfg, val, log=log, on_epoch=keep_best)
                points.append({"rank": rank, "lr": lr, "val_loss_per_epoch": res.val_loss_per_epoch,
                               "train_loss_per_epoch": res.train_loss_per_epoch, "seconds": round(res.seconds, 1),
                               "tokens": res.tokens})
        choice: TrainConfig = best["choice"]
        log(f"{op}: chose rank={choice.rank} lr={choice.lr:g} epochs={choice.epochs} (val loss {best['val_loss']:.4f})")
        _portable_config(tmp / "adapter_config.json", Path(model_dir).name)
        (tmp / "README.md").unlink(missing_ok=True)
        record = {
            "op": op,
            "choice": {**asdict(choice), "target_modules": list(TARGET_MODULES)},
            "best_val_loss": best["val_loss"],
            "train_conversations": sorted({e.group for e in inner_train}),
            "validation_conversations": sorted({e.group for e in inner_val}),
            "train_examples": len(data), "validation_examples": len(val),
            "data_mix": data_mix(examples, data, val),
            "grid": points,
            "total_seconds": round(time.time() - t0, 1),
        }
        (tmp / SELECTION_FILE).write_text(json.dumps(record, indent=2))
        replace_dir(tmp, out_dir, recognise_adapter, "distilled adapter")
    return record


def recognise_adapter(path: Path) -> str | None:
    """None when `path` holds an adapter `distill` wrote (and nothing else)."""
    if not (path / SELECTION_FILE).is_file():
        return f"no {SELECTION_FILE}"
    return only_files(path, {"adapter_config.json", "adapter_model.safetensors", SELECTION_FILE})


def _portable_config(path: Path, base_name: str) -> None:
    """Name the base model by its folder name, not this machine's absolute path."""
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
