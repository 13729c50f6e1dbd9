"""Where memlora keeps what it builds once per machine (converted model, memory store)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
SCHEMAS = Path(__file__).parent / "schemas"  # JSON Schemas of the bundle manifest and the trace format


def home() -> Path:
    """memlora's cache root: `MEMLORA_HOME`, else `~/.cache/memlora`."""
    env = os.environ.get("MEMLORA_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memlora"


def default_model_dir() -> Path:
    """The default base model as `memlora setup` leaves it: safetensors + tokenizer."""
    return home() / "models" / DEFAULT_MODEL_NAME


def default_store() -> Path:
    """The memory store used when none is named."""
    return home() / "store.sqlite"
