"""Activation-aware weight scaling (AWQ, Lin et al. 2023) for the projections that share one input.

Each input channel j gets a scale s_j: the projections store ``W diag(s)`` (their packer quantizes that as
usual) and divide their input by s at run time (`memlora.export.decoder.LoraLinear.input_scale`), which is
exact in float; channels that carry large activations get s > 1, so their weights take more of the 4-bit
grid, and their activations shrink before the per-token int8 quantization. As in AWQ, ``s = rms(x)^alpha``
(normalised to a geometric mean of 1) with alpha searched on `ALPHAS`; the objective is the calibration
output error of the group, ``sum_W tr(D H D^T)`` with ``D = Q(W diag(s)) diag(1/s) - W`` and H the same
``2 X^T X`` GPTQ accumulates (`memlora.export.calibrate`), so no activations are kept. alpha = 0 is
round-to-nearest, so the search never does worse than it on the calibration prompts.
"""

from __future__ import annotations

import torch

from memlora.recipe import QuantRecipe

from . import quant

ALPHAS = tuple(i / 10 for i in range(11))


def scale(weights: list[torch.Tensor], recipes: list[QuantRecipe], hessian: torch.Tensor) -> torch.Tensor:
    """The input-channel scales s [in] of projections `weights` ([out, in] each, stored as `recipes` say)
    whose inputs have Hessian `hessian` [in, in]."""
    h = hessian.float()
    rms = h.diagonal().clamp(min=0).sqrt()
    rms = torch.where(rms > 0, rms, rms[rms > 0].min() if (rms > 0).any() else torch.ones_like(rms))
    best: tuple[float, torch.Tensor] | None = None
    for alpha in ALPHAS:
        s = rms.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        error = 0.0
        for w, recipe in zip(weights, recipes):
            d = quant.weight(w * s, recipe) / s - w
            error += float(((d @ h) * d).sum())
        if best is None or error < best[0]:
            best = (error, s)
    return best[1]
