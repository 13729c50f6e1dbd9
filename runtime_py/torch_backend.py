"""The reference backend: transformers + peft in PyTorch, fp32 by default -- the ground truth for parity.

Three modes: `separable` (one base model, the operation's LoRA adapter switched per call with peft),
`merged` (one copy of the model per adapter with LoRA folded in), `none` (the base model alone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memlora.adapters import load_checked_adapters
from memlora.backend import CheckedBackend
from memlora.errors import MemloraError


class TorchBackend(CheckedBackend):
    """Backend over a HF checkpoint with optional PEFT adapters; keeps a DynamicCache between calls."""

    name = "torch"

    def __init__(
        self,
        model_dir: Path,
        adapters_dir: Path | None = None,
        mode: str = "separable",
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForCausalLM

        if mode not in ("separable", "merged", "none"):
            raise MemloraError(f"unknown adapter mode {mode!r} (separable, merged or none)")
        self.model_dir = Path(model_dir)
        infos = load_checked_adapters(adapters_dir, self.model_dir) if adapters_dir and mode != "none" else {}
        self.adapters = tuple(infos)

        def load_base():
            try:
                m = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
            except (OSError, ValueError) as e:
                raise MemloraError(f"{self.model_dir}: cannot load model ({e})") from e
            return m.eval()

        self.models: dict[str | None, torch.nn.Module] = {}
        if not infos:
            self.models[None] = load_base()
        elif mode == "separable":
            from peft import PeftModel

            names = list(infos)
            peft_model = PeftModel.from_pretrained(load_base(), infos[names[0]].path, adapter_name=names[0])
            for n in names[1:]:
                peft_model.load_adapter(infos[n].path, adapter_name=n)
            self._peft = peft_model.eval()
        else:
            from peft import PeftModel

            for n, info in infos.items():
                self.models[n] = PeftModel.from_pretrained(load_base(), info.path).merge_and_unload().eval()
            self.models[None] = load_base()
        self.mode = mode if infos else "none"
        config = (self._peft.base_model.model if self.mode == "separable" else self.models[None]).config
        self.max_context = int(config.max_position_embeddings)
        self.vocab = int(config.vocab_size)
        self.dtype = dtype
        self._cache = None

    def _model_for(self, adapter: str | None):
        if self.mode != "separable":
            return self.models[adapter], None
        return self._peft, adapter

    @torch.inference_mode()
    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        from transformers import DynamicCache

        model, peft_adapter = self._model_for(adapter)
        if start == 0:
            self._cache = DynamicCache()
        else:  # a rewind drops the positions >= start (crop takes minus the count to remove)
            self._cache.crop(start - self._cache.get_seq_length())
        ids = torch.tensor([tokens], dtype=torch.long)
        pos = torch.arange(start, start + len(tokens)).unsqueeze(0)
        kwargs = dict(input_ids=ids, position_ids=pos, past_key_values=self._cache, use_cache=True,
                      logits_to_keep=0 if all_logits else 1)
        if peft_adapter is not None:
            self._peft.set_adapter(peft_adapter)
            out = model(**kwargs)
        elif self.mode == "separable":
            with self._peft.disable_adapter():
                out = model(**kwargs)
        else:
            out = model(**kwargs)
        return out.logits[0].float().numpy()
