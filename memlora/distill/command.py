"""`memlora distill --op OP --teacher SOURCES --out DIR`: distil one expert adapter.

SOURCES is a comma-separated mix of `locomo` (annotations under --data or $MEMLORA_LOCOMO), `synthetic`
(--synthetic generated conversations with exact labels) and teacher JSONL files. Under `accelerate launch`
the same command trains on several GPUs.
"""

from __future__ import annotations

from dataclasses import replace
from collections import Counter
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from memlora import OPERATIONS
from memlora.errors import MemloraError

TRAIN_CONVERSATIONS = "conv-26,conv-30,conv-41,conv-42,conv-43,conv-44"
VAL_CONVERSATIONS = "conv-44"
SYNTHETIC_CONVERSATIONS = 120


def _floats(spec: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError as e:
        raise MemloraError(f"{name} {spec!r}: expected comma-separated numbers") from e


def _ids(spec: str) -> list[str]:
    return [c.strip() for c in spec.split(",") if c.strip()]


def load_examples(op: str, teacher: str, data: Path | None, train_convs: list[str], synthetic: int) -> list:
    """The examples of every source in `teacher`, each tagged with its source (the data mix)."""
    from .synthetic_teacher import synthetic_examples
    from .teacher import jsonl_examples, load_conversations, locomo_dir, locomo_examples

    sources = _ids(teacher)
    embedder = None
    if op != "extract" and {"locomo", "synthetic"} & set(sources):
        from memlora.embed import Embedder

        embedder = Embedder()
    out = []
    for source in sources:
        if source == "locomo":
            found = locomo_examples(op, load_conversations(locomo_dir(data), train_convs), embedder)
        elif source == "synthetic":
            found = synthetic_examples(op, synthetic, embedder)
        elif Path(source).is_file():
            found = jsonl_examples(Path(source), op)
        else:
            raise MemloraError(f"--teacher {source}: neither `locomo`, `synthetic` nor an existing teacher JSONL file")
        out += [replace(e, source=source if source in ("locomo", "synthetic") else Path(source).name) for e in found]
    return out


def check_held_out(option: str, ids: list[str]) -> None:
    """LoCoMo's test conversations never train or tune an adapter."""
    from .teacher import HELD_OUT

    bad = [c for c in ids if c in HELD_OUT]
    if bad:
        raise MemloraError(f"{option} {','.join(bad)}: held-out test conversation(s), never trained or tuned on "
                           "(see docs/distillation.md)")


def main(
    op: Annotated[str, typer.Option("--op", help=f"operation: {', '.join(OPERATIONS)}")],
    teacher: Annotated[str, typer.Option("--teacher", help="comma-separated sources: `locomo`, `synthetic`, teacher JSONL files (see docs/distillation.md)")],
    out: Annotated[Path, typer.Option("--out", help="adapter directory to write (PEFT format + selection.json)")],
    model: Annotated[Optional[Path], typer.Option("--model", help="base model directory [default: the model from `memlora setup`]")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="LoCoMo directory [default: $MEMLORA_LOCOMO]")] = None,
    train_convs: Annotated[str, typer.Option("--train-convs", help="LoCoMo conversations to train on (outer split)")] = TRAIN_CONVERSATIONS,
    val_convs: Annotated[str, typer.Option("--val-convs", help="conversations (or JSONL groups) for the inner validation split; synthetic ones are chosen by seed")] = VAL_CONVERSATIONS,
    synthetic: Annotated[int, typer.Option("--synthetic", min=1, help="synthetic conversations generated for `--teacher synthetic` (every 6th validates)")] = SYNTHETIC_CONVERSATIONS,
    ranks: Annotated[str, typer.Option("--ranks", help="LoRA ranks to try (one shared rank for the three adapters)")] = "4,8",
    lrs: Annotated[str, typer.Option("--lrs", help="learning rates to try")] = "1e-3,3e-3",
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1, help="epochs scored on validation per grid point")] = 2,
    train_examples: Annotated[int, typer.Option(min=1, help="inner-train examples (a random subset if there are more)")] = 48,
    val_examples: Annotated[int, typer.Option(min=1, help="validation examples")] = 16,
    max_len: Annotated[int, typer.Option(min=16, help="longest example in tokens (longer ones are dropped)")] = 768,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    bf16: Annotated[bool, typer.Option("--bf16/--no-bf16", help="bf16 autocast (faster on CPUs with bf16 matmuls)")] = True,
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (1 is fastest on a busy machine)")] = None,
) -> None:
    """Distil one expert adapter (LoRA) from teacher outputs, with nested validation."""
    from memlora.paths import default_model_dir
    from memlora.session import load_tokenizer

    from .select import Grid, distill
    from .synthetic_teacher import validation_groups
    from .train import TrainConfig

    check_held_out("--train-convs", _ids(train_convs))
    check_held_out("--val-convs", _ids(val_convs))
    if threads:
        import torch

        torch.set_num_threads(threads)
    if op not in OPERATIONS:
        raise MemloraError(f"--op {op!r}: choose one of {', '.join(OPERATIONS)}")
    model = Path(model) if model else default_model_dir()
    if not (model / "config.json").is_file():
        raise MemloraError(f"{model}: no model here; run `memlora setup` (or pass --model DIR)")
    console = Console()
    examples = load_examples(op, teacher, data, _ids(train_convs), synthetic)
    mix = ", ".join(f"{n} {src}" for src, n in Counter(e.source for e in examples).items())
    console.print(f"{op}: {len(examples)} teacher examples ({mix})")
    val_groups = set(_ids(val_convs)) | (validation_groups(synthetic) if "synthetic" in _ids(teacher) else set())
    grid = Grid(tuple(int(r) for r in _floats(ranks, "--ranks")), _floats(lrs, "--lrs"), max_epochs,
                train_examples, val_examples, max_len)
    record = distill(op, examples, val_groups, model, load_tokenizer(model), out, grid,
                     TrainConfig(batch_size=batch_size, bf16=bf16, seed=seed), log=console.print)
    c = record["choice"]
    console.print(f"{op}: wrote {out} (rank {c['rank']}, lr {c['lr']:g}, {c['epochs']} epochs, "
                  f"{record['total_seconds']:.0f} s)")
