"""GPTQ (Frantar et al. 2022) for one weight, on the grid the target's own packer derives.

Every target packs the float weights it is given with its own round-to-nearest packer (onnxruntime's
MatMulNBits quantizer, torchao, coremltools), so calibration cannot hand it codes. `quantize` therefore
returns float weights that the packer maps to exactly the codes GPTQ chose:

- each block keeps the scale round-to-nearest gives the original weight (`memlora.export.quant.grid`:
  GPTQ with static groups), and the block's largest-magnitude element keeps its original value (so the
  packer finds the same maximum, hence the same scale) and its round-to-nearest code;
- every other element is stored as code * scale, clamped to the block's maximum magnitude (a product may
  exceed it by an ulp), and its code is kept within the codes that cannot move the maximum (half_range:
  +-(2^(b-1)-1), since -2^(b-1) * scale lies past the maximum).

The packer then derives the same scale and codes again; `memlora.export.quant.weight` of the result is
the weight GPTQ intended (tests/test_calibrate.py checks this exactly for each scale rule).
"""

from __future__ import annotations

import torch

from memlora.recipe import QuantRecipe

from . import quant

DAMP = 0.01
"""Dampening added to the Hessian's diagonal, as a fraction of its mean (GPTQ's default)."""
BATCH = 128
"""Columns per lazy batch update (GPTQ's default)."""


def quantize(w: torch.Tensor, hessian: torch.Tensor, recipe: QuantRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` [out, in] with GPTQ's codes: (floats the target's packer maps back to them, what the runtime then
    computes with). `hessian` [in, in] is ``2 X^T X`` over the calibration inputs X of this layer (float64)."""
    fp16 = recipe.compute == "fp16"
    g, blocks = quant.grid(w, recipe.bits, recipe.block_size, recipe.scale_rule, fp16)
    out, k = w.shape
    size = blocks.shape[-1]
    start = blocks.reshape(out, -1)[:, :k]  # the weight as the packer reads it (fp16-rounded on Core ML)
    column_block = torch.arange(k) // size
    scale = g.scale[:, column_block, 0]  # [out, in]
    amax = blocks.abs().amax(-1)[:, column_block]
    pinned = torch.zeros(out, blocks.shape[1] * size, dtype=torch.bool)
    pinned.scatter_(1, (blocks.abs().argmax(-1) + torch.arange(blocks.shape[1]) * size), True)
    pinned = pinned[:, :k]
    nearest = g.codes(blocks).reshape(out, -1)[:, :k]
    lo = -g.hi if g.rule == "half_range" else g.lo
    column = quant.Grid(scale, lo, g.hi, g.rule, fp16, k)  # the same rounding, one scale per element
    codes = _gptq(start.double(), hessian, lambda i, v: _code(column, i, v, pinned, nearest, amax),
                  lambda i, c: _at(column, i).values(c))
    values = column.values(codes)
    stored = torch.maximum(torch.minimum(values, amax), -amax)
    return torch.where(pinned, start, stored), values


def _code(column: quant.Grid, i: int, v: torch.Tensor, pinned: torch.Tensor, nearest: torch.Tensor,
          amax: torch.Tensor) -> torch.Tensor:
    """Column `i`'s codes for its current values `v`: the pinned maxima keep their nearest code, an all-zero
    block (which the packer stores as zeros) gets zeros."""
    c = _at(column, i).codes(v.float())
    c = torch.where(pinned[:, i], nearest[:, i], c)
    return torch.where(amax[:, i] == 0, torch.zeros_like(c), c)


def _at(column: quant.Grid, i: int) -> quant.Grid:
    """The grid of input column `i` alone (one scale per output row)."""
    return quant.Grid(column.scale[:, i], column.lo, column.hi, column.rule, column.fp16, 1)


def _gptq(w: torch.Tensor, hessian: torch.Tensor, code, value) -> torch.Tensor:
    """The GPTQ column loop with lazy batch updates: codes [out, in] (float) for `w` (float64, updated in
    place), `code(i, values)` rounding column i and `value(i, codes)` what those codes compute with."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += DAMP * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros(w.shape, dtype=torch.float32)
    k = w.shape[1]
    for i1 in range(0, k, BATCH):
        i2 = min(i1 + BATCH, k)
        errors = torch.zeros(w.shape[0], i2 - i1, dtype=w.dtype)
        for j in range(i2 - i1):
            i = i1 + j
            c = code(i, w[:, i])
            codes[:, i] = c
            err = (w[:, i] - value(i, c).double()) / u[i, i]
            w[:, i:i2] -= err[:, None] * u[i, i:i2][None, :]
            errors[:, j] = err
        w[:, i2:] -= errors @ u[i1:i2, i2:]
    return codes
