"""LoRA training of one expert adapter with peft + accelerate; the loss covers the reply tokens only.

accelerate places the model and batches, so the same code runs on a CPU here and on several GPUs under
`accelerate launch`. On a CPU with bf16 matmuls, autocast to bf16 roughly doubles throughput while the
LoRA weights and optimizer state stay fp32.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from memlora.errors import MemloraError
from memlora.prompts import render

from .teacher import Example

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]
    source: str = "teacher"  # the example's source (the data mix selection.json records)


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 16
    lr: float = 1e-3
    epochs: int = 2
    batch_size: int = 4
    alpha_per_rank: float = 2.0
    seed: int = 0
    bf16: bool = True


@dataclass
class TrainResult:
    val_loss_per_epoch: list[float] = field(default_factory=list)
    train_loss_per_epoch: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


def end_of_turn(tokenizer) -> int:
    """The token that ends an assistant turn in the chat template (what the decode loop stops on)."""
    tid = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tid if isinstance(tid, int) and tid != tokenizer.unk_token_id else tokenizer.eos_token_id


def encode(tokenizer, examples: list[Example], max_len: int) -> list[Encoded]:
    """Prompt (exactly as the pipeline renders it) + reply + end of turn; labels mask the prompt.
    Examples longer than `max_len` tokens are dropped rather than truncated (a cut reply teaches garbage)."""
    eot = end_of_turn(tokenizer)
    out = []
    for e in examples:
        prompt = render(tokenizer, e.messages)
        reply = tokenizer.encode(e.target, add_special_tokens=False) + [eot]
        if len(prompt) + len(reply) <= max_len:
            out.append(Encoded(prompt + reply, [IGNORE] * len(prompt) + reply, e.source))
    return out


def batches(data: list[Encoded], size: int, pad_id: int, rng: random.Random | None) -> list[dict[str, torch.Tensor]]:
    """Length-bucketed, right-padded batches (shuffled when `rng` is given) to waste little compute on pads."""
    order = list(range(len(data)))
    if rng is not None:
        rng.shuffle(order)
    chunk = size * 8
    groups = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: len(data[j].ids))
        groups += [part[k : k + size] for k in range(0, len(part), size)]
    if rng is not None:
        rng.shuffle(groups)
    out = []
    for g in groups:
        n = max(len(data[j].ids) for j in g)
        ids = torch.full((len(g), n), pad_id, dtype=torch.long)
        labels = torch.full((len(g), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(g), n), dtype=torch.long)
        for r, j in enumerate(g):
            k = len(data[j].ids)
            ids[r, :k] = torch.tensor(data[j].ids)
            labels[r, :k] = torch.tensor(data[j].labels)
            mask[r, :k] = 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def _reply_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over reply tokens, and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((shift_labels != IGNORE).sum())


def load_base(model_dir: Path):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise MemloraError(f"{model_dir}: cannot load model ({e})") from e


def lora_model(model_dir: Path, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha_per_rank * cfg.rank, lora_dropout=0.0,
                      target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM")
    return get_peft_model(load_base(model_dir), lora)


def evaluate_loss(model, accelerator, data: list[dict[str, torch.Tensor]], bf16: bool) -> float:
    """Mean cross-entropy per reply token."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in data:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and accelerator.device.type == "cpu"):
                logits = model(input_ids=b["input_ids"].to(accelerator.device),
                               attention_mask=b["attention_mask"].to(accelerator.device)).logits
            loss, n = _reply_loss(logits, b["labels"].to(accelerator.device))
            total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1)


def train(
    model_dir: Path,
    tokenizer,
    train_data: list[Encoded],
    cfg: TrainConfig,
    val_data: list[Encoded] | None = None,
    out_dir: Path | None = None,
    log=print,
    on_epoch=None,
) -> tuple[object, TrainResult]:
    """Train a LoRA adapter; report validation loss after every epoch (to `on_epoch(model, epoch, val_loss)`
    too, e.g. to keep the best checkpoint); save the last state to `out_dir` when given."""
    from accelerate import Accelerator

    if not train_data:
        raise MemloraError("no training examples fit the length limit")
    accelerator = Accelerator(mixed_precision="bf16" if cfg.bf16 and torch.cuda.is_available() else "no")
    model = lora_model(model_dir, cfg)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    # Warm-up, then a constant rate: the adapter after epoch k of a longer run is exactly a k-epoch run,
    # so one run per grid point scores every epoch count.
    warmup = max(1, steps_per_epoch // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / warmup))
    model, optim, sched = accelerator.prepare(model, optim, sched)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn(tokenizer)
    val = batches(val_data, cfg.batch_size, pad, None) if val_data else []
    cpu_autocast = cfg.bf16 and accelerator.device.type == "cpu"
    result, start = TrainResult(), time.time()
    model.train()
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        for b in batches(train_data, cfg.batch_size, pad, rng):
            b = {k: v.to(accelerator.device) for k, v in b.items()}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_autocast):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss_sum, n = _reply_loss(logits, b["labels"])
            accelerator.backward(loss_sum / max(n, 1))
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad()
            total, count = total + float(loss_sum.detach()), count + n
            result.tokens += int(b["attention_mask"].sum())
        result.train_loss_per_epoch.append(total / max(count, 1))
        if val:
            result.val_loss_per_epoch.append(evaluate_loss(model, accelerator, val, cfg.bf16))
        log(f"  epoch {epoch + 1}: train loss {result.train_loss_per_epoch[-1]:.4f}"
            + (f", val loss {result.val_loss_per_epoch[-1]:.4f}" if val else "")
            + f" ({time.time() - start:.0f} s, {result.tokens / (time.time() - start):.0f} tok/s)")
        if on_epoch is not None and val:
            on_epoch(accelerator.unwrap_model(model), epoch + 1, result.val_loss_per_epoch[-1])
    result.seconds = time.time() - start
    model = accelerator.unwrap_model(model)
    if out_dir is not None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    return model, result
