"""Nested validation: the outer split keeps test conversations out entirely; inside the training
conversations an inner validation split picks rank, learning rate and epochs from a small grid, then the
adapter is retrained on all training conversations with that choice. The record lands beside the adapter."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from memlora.errors import MemloraError

from .teacher import Example
from .train import TARGET_MODULES, TrainConfig, encode, train

SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class Grid:
    ranks: tuple[int, ...] = (8, 16)
    lrs: tuple[float, ...] = (2e-4, 1e-3)
    max_epochs: int = 3
    search_examples: int = 64  # inner-train examples per grid point (subsampled to keep the search cheap)
    val_examples: int = 32
    final_examples: int = 400  # examples for the final adapter (train + inner validation conversations)
    max_len: int = 768


def split_groups(examples: list[Example], val_groups: set[str]) -> tuple[list[Example], list[Example]]:
    """Inner split by conversation: nothing of a validation conversation is trained on during the search."""
    train = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    if not train or not val:
        raise MemloraError(
            f"inner split left {len(train)} training and {len(val)} validation examples "
            f"(validation conversations: {', '.join(sorted(val_groups))})"
        )
    return train, val


def _sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


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
    """Grid search on the inner split, retrain with the best point, write adapter + selection record."""
    t0 = time.time()
    inner_train, inner_val = split_groups(examples, val_groups)
    search = encode(tokenizer, _sample(inner_train, grid.search_examples, base.seed), grid.max_len)
    val = encode(tokenizer, _sample(inner_val, grid.val_examples, base.seed + 1), grid.max_len)
    points = []
    for rank in grid.ranks:
        for lr in grid.lrs:
            cfg = replace(base, rank=rank, lr=lr, epochs=grid.max_epochs)
            log(f"{op}: grid rank={rank} lr={lr:g} ({len(search)} train / {len(val)} validation examples)")
            _, res = train(model_dir, tokenizer, search, cfg, val, log=log)
            points.append({"rank": rank, "lr": lr, "val_loss_per_epoch": res.val_loss_per_epoch,
                           "train_loss_per_epoch": res.train_loss_per_epoch, "seconds": round(res.seconds, 1)})
    best = min(((p, e) for p in points for e in range(len(p["val_loss_per_epoch"]))),
               key=lambda pe: pe[0]["val_loss_per_epoch"][pe[1]])
    choice = replace(base, rank=best[0]["rank"], lr=best[0]["lr"], epochs=best[1] + 1)
    log(f"{op}: chose rank={choice.rank} lr={choice.lr:g} epochs={choice.epochs}")
    record = train_final(op, examples, model_dir, tokenizer, out_dir, choice, grid, log)
    record.update(search={"inner_train_conversations": sorted({e.group for e in inner_train}),
                          "validation_conversations": sorted(val_groups), "points": points,
                          "best_val_loss": best[0]["val_loss_per_epoch"][best[1]]},
                  total_seconds=round(time.time() - t0, 1))
    write_record(out_dir, record)
    return record


def train_final(op: str, examples: list[Example], model_dir: Path, tokenizer, out_dir: Path, cfg: TrainConfig,
                grid: Grid, log=print) -> dict:
    """Train the shipped adapter on all training conversations with `cfg`; write it atomically to `out_dir`."""
    data = encode(tokenizer, _sample(examples, grid.final_examples, cfg.seed + 2), grid.max_len)
    log(f"{op}: final training on {len(data)} examples, rank={cfg.rank} lr={cfg.lr:g} epochs={cfg.epochs}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _, res = train(model_dir, tokenizer, data, cfg, out_dir=tmp, log=log)
        _portable_config(tmp / "adapter_config.json", Path(model_dir).name)
        (tmp / "README.md").unlink(missing_ok=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {"op": op, "choice": {**asdict(cfg), "target_modules": list(TARGET_MODULES)},
              "final": {"examples": len(data), "conversations": sorted({e.group for e in examples}),
                        "train_loss_per_epoch": res.train_loss_per_epoch, "seconds": round(res.seconds, 1),
                        "tokens": res.tokens}}
    write_record(out_dir, record)
    return record


def _portable_config(path: Path, base_name: str) -> None:
    """Name the base model by its folder name, not this machine's absolute path."""
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base_name
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def write_record(out_dir: Path, record: dict) -> None:
    tmp = Path(out_dir) / (SELECTION_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.rename(Path(out_dir) / SELECTION_FILE)
