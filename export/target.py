"""The one interface every target exporter implements, and the one place an export request is checked.

A target module (`onnx_export`, `executorch_export`, `coreml_export`) defines ``EXPORTER = Exporter(...)``:
its name, the modes and quants it accepts, the `QuantRecipe` a request gets, and ``export(request, dir,
stage)`` which writes ``dir/<target>/`` and returns the rest of its manifest entry. `check_request` runs for
every target before any is built, so a refused combination costs no export time; the recipe a request gets
is also what parity simulates and what the release matrix enumerates.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from memlora.errors import MemloraError
from memlora.recipe import QuantRecipe

if TYPE_CHECKING:  # the request names adapters; loading them needs torch
    from .calibrate import Calibration
    from .lora import Adapter

Stage = Callable[[str], None]
MODES = ("merged", "separable")
TARGETS = {
    "onnx": "memlora.export.onnx_export",
    "executorch": "memlora.export.executorch_export",
    "coreml": "memlora.export.coreml_export",
    "gguf": "memlora.export.gguf_export",
}


@dataclass(frozen=True)
class TargetRequest:
    """What every target exporter gets: the model, its adapters, and the user's export options."""

    model_dir: Path
    adapters: dict[str, Adapter]
    mode: str
    quant: str
    block_size: int
    max_context: int
    embedding_int8: bool = False
    """int8 weight-only token embeddings (targets whose `Exporter.options` list it)."""
    calibration_samples: int = 0
    """Calibrate on this many prompts per operation (`--calibrate`); 0: round-to-nearest."""
    calibration_method: str = "gptq"
    """`memlora.recipe.Calibration` used when `calibration_samples` > 0 (`--calibration-method`)."""
    calibration: Calibration | None = None
    """The calibrated base weights for this target's recipe, computed before its export (`memlora.export.
    command`); the exporter loads its decoder with them (`memlora.export.calibrate.load_decoder`)."""
    int8_projections: tuple[str, ...] | None = None
    """Projections kept at 8 bits in a lower-bit recipe (`QuantRecipe.int8_projections`, `--int8-projections`);
    None: the target's own choice (targets whose `Exporter.options` list it)."""


@dataclass(frozen=True)
class Exporter:
    name: str
    label: str
    """How messages name the target (``ONNX``, ``Core ML``)."""
    quants: tuple[str, ...]
    own_recipe: Callable[[TargetRequest], QuantRecipe]
    """The target's numerics for a request (round-to-nearest); `recipe` adds the calibration."""
    export: Callable[[TargetRequest, Path, Stage], dict]
    modes: tuple[str, ...] = MODES
    refused: dict[str, str] = field(default_factory=dict)
    """Quants a user may expect, with why this target refuses them."""
    options: frozenset[str] = frozenset()
    """Optional request fields it honours (``embedding_int8``); set on a target without them is an error."""
    check: Callable[[TargetRequest], str | None] = lambda req: None
    """Target-specific refusals (e.g. a reserved adapter name): the problem, or None."""

    def recipe(self, req: TargetRequest) -> QuantRecipe:
        """The recipe `req` gets: the target's own, calibrated when the request asks (`check_request`
        refuses a calibration the recipe cannot take)."""
        own = self.own_recipe(req)
        if not req.calibration_samples:
            return own
        return replace(own, calibration=req.calibration_method, calibration_samples=req.calibration_samples)


def load(name: str) -> Exporter:
    if name not in TARGETS:
        raise MemloraError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return importlib.import_module(TARGETS[name]).EXPORTER


def check_request(exporter: Exporter, req: TargetRequest) -> None:
    """Refuse, in one message style, a request `exporter` cannot export."""
    def fail(problem: str) -> MemloraError:
        return MemloraError(f"{exporter.label} export: {problem}")

    if req.mode not in exporter.modes:
        raise fail(f"--mode {req.mode} is not supported (choose from {', '.join(exporter.modes)})")
    if req.quant in exporter.refused:
        raise fail(f"--quant {req.quant} is refused: {exporter.refused[req.quant]}")
    if req.quant not in exporter.quants:
        raise fail(f"--quant {req.quant} is not supported (choose from {', '.join(exporter.quants)})")
    if req.embedding_int8 and "embedding_int8" not in exporter.options:
        raise fail("--embedding-int8 is not supported (only targets that quantize the embedding table alone take it)")
    if req.int8_projections is not None and "int8_projections" not in exporter.options:
        raise fail("--int8-projections is not supported (only targets with mixed-precision kernels take it)")
    if req.calibration_samples:
        if req.mode != "separable":
            raise fail(f"--calibrate needs --mode separable: --mode {req.mode} folds each adapter into the base "
                       "weights before packing, so no one set of calibrated base weights is what it packs")
        weights = exporter.own_recipe(req).weights
        if weights != "linear":
            raise fail(f"--calibrate chooses integer codes; --quant {req.quant} stores {weights} weights "
                       "(calibrate int4 or int8)")
    try:
        exporter.recipe(req)
    except ValueError as e:  # a combination of options the recipe cannot hold
        raise fail(str(e)) from e
    problem = exporter.check(req)
    if problem:
        raise fail(problem)
