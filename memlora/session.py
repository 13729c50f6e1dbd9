"""Where the shipped adapters are, and loading a tokenizer with an error that names its directory."""

from __future__ import annotations

from pathlib import Path

from .errors import MemloraError

DEFAULT_ADAPTERS = Path(__file__).parent / "default_adapters"
"""The distilled expert adapters for the default model, shipped with the package."""


def default_adapters() -> Path | None:
    return DEFAULT_ADAPTERS if (DEFAULT_ADAPTERS / "extract" / "adapter_config.json").is_file() else None


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise MemloraError(f"{path}: cannot load tokenizer ({e})") from e
