"""Tensor-level parity: how far one backend's logits are from another's, position by position.

Logits arrive in blocks (a prefill chunk, or one teacher-forced decode step) and are folded into running
sums, so a prompt as long as the context never holds more than one block per backend in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class LogitStats:
    """Running max/mean |diff|, mean cosine, mean KL(ref || other) and SQNR over every position seen."""

    positions: int = 0
    elements: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    sum_cos: float = 0.0
    sum_kl: float = 0.0
    signal: float = 0.0
    noise: float = 0.0
    top1_same: int = 0

    def add(self, ref: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Fold in a block of logits ``(n, vocab)``; returns the per-position max |diff| of the block."""
        ref = np.asarray(ref, np.float64)
        other = np.asarray(other, np.float64)
        diff = other - ref
        per_pos = np.abs(diff).max(axis=-1)
        self.positions += ref.shape[0]
        self.elements += ref.size
        self.max_abs = max(self.max_abs, float(per_pos.max()))
        self.sum_abs += float(np.abs(diff).sum())
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(other, axis=-1)
        self.sum_cos += float(((ref * other).sum(-1) / np.maximum(norms, 1e-30)).sum())
        lp, lq = _log_softmax(ref), _log_softmax(other)
        self.sum_kl += float((np.exp(lp) * (lp - lq)).sum(-1).clip(min=0).sum())
        self.signal += float((ref * ref).sum())
        self.noise += float((diff * diff).sum())
        self.top1_same += int((ref.argmax(-1) == other.argmax(-1)).sum())
        return per_pos

    def summary(self) -> dict[str, float | None]:
        """The report's tensor metrics (None before any position was seen)."""
        if not self.positions:
            return {"max_abs": None, "mean_abs": None, "cosine": None, "kl": None, "sqnr_db": None}
        sqnr = float("inf") if self.noise == 0 else 10 * np.log10(self.signal / self.noise)
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.elements,
            "cosine": self.sum_cos / self.positions,
            "kl": self.sum_kl / self.positions,
            "sqnr_db": min(float(sqnr), 999.0),  # JSON has no infinity; 999 dB means bit-identical
        }

    def gap(self) -> dict[str, float | None]:
        """The compact form used to split a gap into quantization and conversion error."""
        s = self.summary()
        top1 = self.top1_same / self.positions if self.positions else None
        return {"max_abs": s["max_abs"], "mean_abs": s["mean_abs"], "kl": s["kl"], "sqnr_db": s["sqnr_db"],
                "top1_agreement": top1}
