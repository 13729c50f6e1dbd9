"""The two references a target is judged against.

1. `fp32_reference`: the transformers+peft pipeline in fp32 -- what users care about.
2. `DecoderReference`: the export-friendly decoder every exporter starts from, with the target's
   quantization recipe simulated in torch (weights quantize-dequantized as the runtime stores them,
   activations quantized the way its kernel does; a calibrated recipe's GPTQ weights recomputed as the
   export computed them, `memlora.export.calibrate`). The gap reference -> decoder reference is quantization
   error; the gap decoder reference -> target is conversion error (what the exporter or runtime broke).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memlora.backend import CheckedBackend
from memlora.export.calibrate import calibrate, load_decoder
from memlora.export.lora import Adapter, fill_slots, unify_slots
from memlora.export.quant import quantize_decoder
from memlora.recipe import QuantRecipe


def fp32_reference(model_dir: Path, adapters_dir: Path):
    from memlora.runtime.torch_backend import TorchBackend

    return TorchBackend(model_dir, adapters_dir, mode="separable")


def simulation(recipe: QuantRecipe) -> dict:
    """What the decoder reference reproduces of `recipe`, for the report: stored weights exactly (the same
    quantize-dequantize the runtime's format implies); activations as the kernel quantizes them; fp16 compute
    only as fp16-rounded parameters (activations stay fp32), so an fp16 target keeps a small conversion gap."""
    return {"recipe": recipe.to_json(), "weights": "exact" if recipe.calibration == "none" else
            f"exact ({recipe.calibration} recomputed)", "activations": recipe.activations,
            "compute": "exact" if recipe.compute == "fp32" else "parameters rounded to fp16, activations fp32"}


class DecoderReference(CheckedBackend):
    """The export-friendly decoder (static KV cache, LoRA slots) as a Backend, with a recipe simulated; it keeps
    the `memlora.backend.Backend` contract like every target it is compared with."""

    def __init__(self, model_dir: Path, adapters: dict[str, Adapter], recipe: QuantRecipe, max_context: int):
        slots = unify_slots(adapters.values()) if adapters else None
        calibration = None if recipe.calibration == "none" else calibrate(Path(model_dir), adapters, recipe)
        self.decoder = load_decoder(Path(model_dir), max_context, slots, calibration)
        self.sim = simulation(recipe)
        quantize_decoder(self.decoder, recipe)
        self.name = f"decoder[{recipe.scheme}]"
        self._adapters = adapters
        self.adapters = tuple(adapters)
        self.max_context = self.decoder.config.max_context
        self.vocab = self.decoder.config.vocab_size
        self._active: object = ...

    def _activate(self, adapter: str | None) -> None:
        if adapter != self._active:
            fill_slots(self.decoder, self._adapters[adapter]) if adapter else self.decoder.clear_lora()
            self._active = adapter

    @torch.inference_mode()
    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        self._activate(adapter)
        logits = self.decoder(torch.tensor([tokens]), torch.arange(start, start + len(tokens)))[0]
        return (logits if all_logits else logits[-1:]).float().numpy()

    @torch.inference_mode()
    def hidden_states(self, tokens: list[int], adapter: str | None) -> list[np.ndarray]:
        """Embeddings and every layer's output for a prefill of `tokens` from position 0 (for localisation):
        the cache then holds that prefill, as after a `forward` of it."""
        self.check(tokens, 0, adapter)
        self._activate(adapter)
        _, hidden = self.decoder(torch.tensor([tokens]), torch.arange(len(tokens)), return_hidden=True)
        self.cached, self.sequence_adapter = len(tokens), adapter
        return [h[0].float().numpy() for h in hidden]
