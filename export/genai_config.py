"""onnxruntime-genai's view of the ONNX target: the graph's input/output names and ``genai_config.json``.

onnxruntime-genai (``og.Model(dir)``) runs a decoder graph it did not build when a ``genai_config.json``
beside it names the graph's inputs and outputs and the model's sizes, and the graph follows its calling
convention: ``input_ids`` and an ``attention_mask`` of ones over every position so far (it feeds no
positions, sequence lengths or logits index), per-layer ``past_key_values.<i>.key/.value`` it binds to the
same buffer as ``present.<i>.key/.value`` (a cache of a fixed length is sized by the graph, not by
``max_length``), and ``logits`` for every new position. Any other graph input must have a stored default;
its LoRA adapters (``og.Adapters``) feed named graph inputs through onnxruntime's LoRA API, which is what our
``.onnx_adapter`` files already are. The ONNX exporter names its graph by the patterns here, so the config
and the graph cannot disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FILE = "genai_config.json"
PAST = "past_key_values.%d.{}"
PRESENT = "present.%d.{}"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Per-layer past and present names, key before value, in layer order."""
    past = [PAST.format(kv) % i for i in range(num_layers) for kv in ("key", "value")]
    return past, [PRESENT.format(kv) % i for i in range(num_layers) for kv in ("key", "value")]


@dataclass(frozen=True)
class GenaiModel:
    """The facts ``genai_config.json`` states about a decoder graph."""

    architecture: str
    """onnxruntime-genai's model type; our architectures (llama, qwen2) are names it knows."""
    graph: str
    """The graph's file name, relative to the config's folder."""
    tokenizer_dir: str
    """The tokenizer's folder, relative to the config's folder."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_context: int
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int

    def to_json(self) -> dict:
        """The config onnxruntime-genai reads: greedy search over the whole context, cache shared in place."""
        return {
            "model": {
                "type": self.architecture,
                "tokenizer_dir": self.tokenizer_dir,
                "vocab_size": self.vocab_size,
                "context_length": self.max_context,
                "bos_token_id": self.bos_id if self.bos_id is not None else self.pad_id,
                "eos_token_id": list(self.eos_ids),
                "pad_token_id": self.pad_id,
                "decoder": {
                    "filename": self.graph,
                    "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                    "hidden_size": self.hidden_size,
                    "head_size": self.head_dim,
                    "num_hidden_layers": self.num_layers,
                    "num_attention_heads": self.num_heads,
                    "num_key_value_heads": self.num_kv_heads,
                    "inputs": {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
                               "past_key_names": PAST.format("key"), "past_value_names": PAST.format("value")},
                    "outputs": {"logits": LOGITS, "present_key_names": PRESENT.format("key"),
                                "present_value_names": PRESENT.format("value")},
                },
            },
            "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "top_p": 1.0,
                       "temperature": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
                       "no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "early_stopping": True,
                       "min_length": 0, "max_length": self.max_context, "past_present_share_buffer": True},
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path
