"""Everything a CLI verb needs to run the pipeline: backend, tokenizer, store, embedder, chosen once from
the common options (`--backend`, `--bundle`, `--model`, `--adapters`, `--no-adapters`, `--store`)."""

from __future__ import annotations

from pathlib import Path

from .errors import MemloraError
from .pipeline import MemoryPipeline
from .store import MemoryStore
from .trace import TraceWriter

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


def open_pipeline(
    store: Path,
    backend: str | None = None,
    bundle: Path | None = None,
    model: Path | None = None,
    adapters: Path | None = None,
    no_adapters: bool = False,
    trace: Path | None = None,
    read_only: bool = False,
    threads: int | None = None,
) -> MemoryPipeline:
    """Build the pipeline the options describe; the default is the reference model with shipped adapters.
    `backend` None means no `--backend` was given (see `choose_backend`); `threads` sizes torch's thread pool
    (the embedder's and the torch backend's) and a bundle runtime's.

    The options are checked and the store is opened first (read-only for verbs that only read it), so a wrong
    option or `--store` fails before a model loads."""
    from memlora.runtime.registry import choose_backend, open_backend

    from .embed import Embedder
    from .paths import default_model_dir

    backend = choose_backend(backend, bundle, model, adapters)
    memory = MemoryStore(store, read_only=read_only)
    if backend == "torch":
        model = Path(model) if model else default_model_dir()
        if not (model / "config.json").is_file():
            raise MemloraError(f"{model}: no model here; run `memlora setup` (or pass --model DIR)")
        if adapters is None and not no_adapters and model == default_model_dir():
            adapters = default_adapters()
    if threads:
        import torch

        torch.set_num_threads(threads)
    be, tok_dir = open_backend(backend, bundle, model, None if no_adapters else adapters, threads=threads)
    return MemoryPipeline(
        be,
        load_tokenizer(tok_dir),
        memory,
        Embedder(),
        use_adapters=not no_adapters,
        trace=TraceWriter(trace) if trace else None,
    )
