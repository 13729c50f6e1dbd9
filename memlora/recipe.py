"""The quantization recipe of one exported target, typed: what its base weights, activations and embeddings
become, and the runtime op that computes with them.

Each exporter states its recipe as a `QuantRecipe` (`memlora.export.target.Exporter.recipe`); the bundle
manifest carries it (`to_json`, validated by the manifest schema); parity simulates it field by field in torch
and picks its limits by `scheme`; bench counts the bytes a decode step reads from `weight_bits` and
`embedding_bits`. Nothing reads a recipe by matching strings: a new runtime's numerics are a new field value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from typing import Literal, get_args, get_origin, get_type_hints

from memlora.errors import MemloraError

Scheme = Literal["fp32", "fp16", "int8", "int4", "pal4"]
"""The precision a user asks for (`--quant`) and thresholds are keyed by."""
Weights = Literal["float", "linear", "palette"]
"""How base weights are stored: floats, integer codes times a scale, or indices into a lookup table."""
ScaleRule = Literal["none", "max_to_min", "restricted", "half_range", "min_max"]
"""How a linear block's scale is chosen (symmetric, no zero point, unless named otherwise):
``max_to_min``: the value of largest magnitude maps to the most negative code -2^(b-1) (onnxruntime MLAS);
``restricted``: max |w| maps to 2^(b-1)-1 and codes stay within +-(2^(b-1)-1) (coremltools);
``half_range``: scale = max |w| / ((2^b - 1) / 2), codes clamped to [-2^(b-1), 2^(b-1)-1] (torchao);
``min_max`` (asymmetric): the block's min maps to code 0 and its max to 2^b - 1, a value is code * scale + min
(llama.cpp Q4_1)."""
Activations = Literal["float", "int8_block", "int8_token_asym"]
"""Dynamic activation quantization in front of a quantized matmul: none; symmetric int8 per block of
`act_block` inputs (MatMulNBits accuracy level 4); asymmetric int8 per token (torchao 8da)."""
ScaleDtype = Literal["fp32", "fp16"]
"""How a block's scale is stored (weights and int8 activations): as computed, or rounded to fp16 beside fp32
compute (llama.cpp's Q8_0/Q4_0 blocks), which is what the products use; codes are rounded on the fp32 scale."""
Uneven = Literal["pad", "skip"]
"""A weight whose axis the blocks do not tile: quantized with a zero-padded last block, or left in float."""
Embedding = Literal["float", "as_weights", "int8_row", "q8_0"]
"""The token embedding table: compute-precision floats; quantized like the base weights; int8 weight-only with
one half-range scale per row; llama.cpp Q8_0 (int8 codes per block of 32, restricted fp16 scales), which a
quantized tied head reads as well."""
Calibration = Literal["none", "gptq", "awq"]
"""How linear codes are chosen, on the grid the runtime's packer derives: round-to-nearest; GPTQ (error feedback
on the memory operations' own prompts, `memlora.export.calibrate`); or AWQ (per-input-channel scales multiplied
into the weights and divided out of their inputs, searched on the same prompts, `memlora.export.awq`)."""

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
"""The base projections a recipe can name (the decoder's module names; ``lm_head``: the output head)."""

COMPUTE_BITS = {"fp32": 32, "fp16": 16}
ADDED_LATER = {"calibration": "none", "calibration_samples": 0, "int8_projections": [], "scale_dtype": "fp32"}
"""Fields manifests written before them lack (memlora <= 0.4.1), with the value those bundles had."""


@dataclass(frozen=True)
class QuantRecipe:
    scheme: Scheme
    op: str
    """What the quantized matmul lowers to in the runtime (for people; never interpreted)."""
    compute: Literal["fp32", "fp16"] = "fp32"
    weights: Weights = "float"
    bits: int | None = None
    """Bits per weight code (linear) or table index (palette); None for float weights."""
    block_size: int | None = None
    """linear: inputs sharing one scale (None: one scale per output channel); palette: output channels sharing
    one table."""
    scale_rule: ScaleRule = "none"
    scale_dtype: ScaleDtype = "fp32"
    symmetric: bool = True
    uneven: Uneven = "pad"
    activations: Activations = "float"
    act_block: int | None = None
    lm_head: bool = False
    """The output head is quantized as the base projections are (a copy when embeddings are tied)."""
    embedding: Embedding = "float"
    calibration: Calibration = "none"
    calibration_samples: int = 0
    """Calibration prompts per memory operation (0 when uncalibrated): with the seeds, what reproduces them."""
    int8_projections: tuple[str, ...] = ()
    """Mixed precision: projections (`PROJECTIONS`, in every layer) whose weights keep 8-bit codes with one
    scale per output channel instead of `bits` in blocks -- where 4-bit codes cost the most agreement per byte
    (measured: docs/executorch.md). Activations in front of them are quantized as everywhere else."""
    notes: str = ""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ValueError(f"quantization recipe {self.scheme}: {problem}")

    def _problem(self) -> str | None:
        for name, allowed in _choices().items():
            if getattr(self, name) not in allowed:
                return f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
        if self.weights == "float":
            if self.bits is not None or self.block_size is not None or self.scale_rule != "none":
                return "float weights take no bits, block size or scale rule"
            if self.activations != "float" or self.lm_head or self.embedding in ("as_weights", "q8_0"):
                return "float weights leave activations, head and embedding in float"
        elif self.bits not in (2, 3, 4, 6, 8):
            return f"bits {self.bits!r}: a quantized recipe stores 2-8 bit codes"
        if self.scale_dtype == "fp16" and (self.weights != "linear" or self.compute != "fp32"):
            return "fp16 scale storage is for linear codes under fp32 compute (fp16 compute rounds every scale)"
        if (self.scale_rule == "min_max") == self.symmetric:
            return "the min_max scale rule is the one asymmetric rule (symmetric False exactly with it)"
        if self.weights == "linear" and self.scale_rule == "none":
            return "linear weights need a scale rule"
        if self.weights == "palette" and (self.block_size is None or self.scale_rule != "none"):
            return "a palette needs a group size (block_size) and no scale rule"
        if (self.activations == "int8_block") != (self.act_block is not None):
            return "act_block is set exactly when activations are int8_block"
        if self.calibration != "none" and self.weights != "linear":
            return f"calibration {self.calibration} chooses linear codes; {self.weights} weights have none"
        if (self.calibration == "none") != (self.calibration_samples == 0) or self.calibration_samples < 0:
            return "calibration_samples is a positive count exactly when calibrated"
        if not isinstance(self.int8_projections, tuple):
            return "int8_projections is a tuple of projection names"
        unknown = [p for p in self.int8_projections if p not in PROJECTIONS]
        if unknown:
            return f"int8_projections {unknown} are not projections ({', '.join(PROJECTIONS)})"
        if self.int8_projections and (self.weights != "linear" or self.bits >= 8):
            return "int8_projections widen some projections of a linear recipe with fewer than 8 bits"
        if "lm_head" in self.int8_projections and (not self.lm_head or self.embedding in ("as_weights", "q8_0")):
            return "int8_projections names lm_head, which this recipe leaves in float or stores as the embedding"
        return None

    def for_projection(self, name: str) -> QuantRecipe:
        """The recipe one projection is stored with (`name` a module path or name: ``layers.3.self_attn.v_proj``,
        ``lm_head``): this one, or 8-bit per-channel codes where `int8_projections` names it."""
        if name.rsplit(".", 1)[-1] not in self.int8_projections:
            return self
        return replace(self, bits=8, block_size=None, int8_projections=())

    @property
    def weight_bits(self) -> int:
        """Bits a stored base weight takes (codes only, scales and tables not counted)."""
        return self.bits if self.bits is not None else COMPUTE_BITS[self.compute]

    @property
    def embedding_bits(self) -> int:
        """Bits a stored token-embedding weight takes (a decode step reads one row)."""
        return {"float": COMPUTE_BITS[self.compute], "as_weights": self.weight_bits, "int8_row": 8,
                "q8_0": 8}[self.embedding]

    def to_json(self) -> dict:
        return {**asdict(self), "int8_projections": list(self.int8_projections)}

    @classmethod
    def from_json(cls, data: object, where: str) -> QuantRecipe:
        """The recipe a manifest holds; anything else is one error naming `where` (the manifest's path)."""
        if not isinstance(data, dict):
            raise MemloraError(f"{where}: quantization recipe is not an object")
        names = {f.name for f in fields(cls)}
        data = {**ADDED_LATER, **data}
        if isinstance(data["int8_projections"], list):
            data["int8_projections"] = tuple(data["int8_projections"])
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise MemloraError(f"{where}: quantization recipe has {'unknown ' + str(unknown) if unknown else ''}"
                               f"{' and ' if unknown and missing else ''}{'no ' + str(missing) if missing else ''}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise MemloraError(f"{where}: {e}") from e


@cache
def _choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of every Literal-typed field (also what the manifest schema enumerates)."""
    return {n: get_args(t) for n, t in get_type_hints(QuantRecipe).items() if get_origin(t) is Literal}
