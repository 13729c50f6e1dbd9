"""`memlora distill --op OP --teacher SOURCE --out DIR`: distil one expert adapter.

SOURCE is `locomo` (annotations under --data or $MEMLORA_LOCOMO) or a teacher JSONL file. Under
`accelerate launch` the same command trains on several GPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from memlora import OPERATIONS
from memlora.errors import MemloraError

TRAIN_CONVERSATIONS = "conv-26,conv-30,conv-41,conv-42,conv-43,conv-44"
VAL_CONVERSATIONS = "conv-44"


def _floats(spec: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in spec.split(",") if x.strip())
    except ValueError as e:
        raise MemloraError(f"{name} {spec!r}: expected comma-separated numbers") from e


def load_examples(op: str, teacher: str, data: Path | None, train_convs: list[str]):
    from .teacher import jsonl_examples, load_conversations, locomo_dir, locomo_examples

    if teacher == "locomo":
        return locomo_examples(op, load_conversations(locomo_dir(data), train_convs))
    path = Path(teacher)
    if not path.is_file():
        raise MemloraError(f"--teacher {teacher}: neither `locomo` nor an existing teacher JSONL file")
    return jsonl_examples(path, op)


def main(
    op: Annotated[str, typer.Option("--op", help=f"operation: {', '.join(OPERATIONS)}")],
    teacher: Annotated[str, typer.Option("--teacher", help="`locomo` or a teacher JSONL file (see docs/distillation.md)")],
    out: Annotated[Path, typer.Option("--out", help="adapter directory to write (PEFT format + selection.json)")],
    model: Annotated[Optional[Path], typer.Option("--model", help="base model directory [default: the model from `memlora setup`]")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="LoCoMo directory [default: $MEMLORA_LOCOMO]")] = None,
    train_convs: Annotated[str, typer.Option("--train-convs", help="LoCoMo conversations to train on (outer split)")] = TRAIN_CONVERSATIONS,
    val_convs: Annotated[str, typer.Option("--val-convs", help="conversations (or JSONL groups) for the inner validation split")] = VAL_CONVERSATIONS,
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
    from .train import TrainConfig

    if threads:
        import torch

        torch.set_num_threads(threads)
    if op not in OPERATIONS:
        raise MemloraError(f"--op {op!r}: choose one of {', '.join(OPERATIONS)}")
    model = Path(model) if model else default_model_dir()
    if not (model / "config.json").is_file():
        raise MemloraError(f"{model}: no model here; run `memlora setup` (or pass --model DIR)")
    console = Console()
    examples = load_examples(op, teacher, data, [c.strip() for c in train_convs.split(",") if c.strip()])
    console.print(f"{op}: {len(examples)} teacher examples from {teacher}")
    grid = Grid(tuple(int(r) for r in _floats(ranks, "--ranks")), _floats(lrs, "--lrs"), max_epochs,
                train_examples, val_examples, max_len)
    record = distill(op, examples, {c.strip() for c in val_convs.split(",")}, model, load_tokenizer(model), out, grid,
                     TrainConfig(batch_size=batch_size, bf16=bf16, seed=seed), log=console.print)
    c = record["choice"]
    console.print(f"{op}: wrote {out} (rank {c['rank']}, lr {c['lr']:g}, {c['epochs']} epochs, "
                  f"{record['total_seconds']:.0f} s)")
