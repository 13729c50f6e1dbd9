"""Backend names -> constructors, and the pipeline the common CLI options describe (`--backend`, `--bundle`,
`--model`, `--adapters`, `--no-adapters`, `--store`). Runtimes are imported only when chosen, so `memlora ask`
on one backend never pays for importing the others."""

from __future__ import annotations

import importlib
from pathlib import Path

from memlora.backend import Backend
from memlora.bundle_tokenizer import BundleTokenizer
from memlora.errors import MemloraError
from memlora.pipeline import MemoryPipeline
from memlora.session import default_adapters, load_tokenizer
from memlora.store import MemoryStore
from memlora.trace import TraceWriter

BUNDLE_BACKENDS = {
    "onnx": "memlora.runtime.onnx_backend",
    "executorch": "memlora.runtime.executorch_backend",
    "coreml": "memlora.runtime.coreml_backend",
    "gguf": "memlora.runtime.gguf_backend",
}
NAMES = ("torch", *BUNDLE_BACKENDS)
EMBEDDER_BACKENDS = {
    "onnx": "memlora.runtime.onnx_embedder",
    "executorch": "memlora.runtime.executorch_embedder",
    "coreml": "memlora.runtime.coreml_embedder",
}


def choose_backend(name: str | None, bundle: Path | None, model: Path | None, adapters: Path | None) -> str:
    """The backend the common options name (`name` None: no `--backend` given), refusing an option it would
    ignore: `--bundle` alone runs the bundle's only target; a bundle backend runs the bundle's own model and
    adapters, so `--model`/`--adapters` beside it are an error rather than silently unused."""
    if name is None:
        if bundle is None:
            return "torch"
        from memlora.export.bundle import load_bundle

        targets = list(load_bundle(Path(bundle), verify=False).manifest["targets"])
        if len(targets) != 1:
            raise MemloraError(f"{bundle}: the bundle has targets {', '.join(targets)}: pass --backend to choose one")
        name = targets[0]
    if name == "torch" and bundle is not None:
        raise MemloraError(f"--bundle {bundle}: the torch backend runs --model and --adapters, not a bundle; "
                           f"pass --backend {' | '.join(BUNDLE_BACKENDS)}")
    for option, path in (("--model", model), ("--adapters", adapters)):
        if name in BUNDLE_BACKENDS and path is not None:
            raise MemloraError(f"{option} {path}: not used by the {name} backend: the bundle carries its own model "
                               "and adapters")
    return name


def open_backend(
    name: str,
    bundle: Path | None = None,
    model: Path | None = None,
    adapters: Path | None = None,
    adapter_mode: str = "separable",
    threads: int | None = None,
) -> tuple[Backend, Path]:
    """Open backend `name`; returns it with the directory holding its tokenizer files. `threads` sizes a bundle
    runtime's thread pool (torch's is process-wide: its caller sets it)."""
    if name == "torch":
        from .torch_backend import TorchBackend

        if model is None:
            raise MemloraError("the torch backend needs a model directory (run `memlora setup` first)")
        return TorchBackend(model, adapters, mode=adapter_mode if adapters else "none"), Path(model)
    if name not in BUNDLE_BACKENDS:
        raise MemloraError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    if bundle is None:
        raise MemloraError(f"the {name} backend runs an exported bundle: pass --bundle DIR (see `memlora export`)")
    module = importlib.import_module(BUNDLE_BACKENDS[name])
    backend = module.from_bundle(Path(bundle), threads=threads)
    return backend, Path(bundle) / "tokenizer"


def open_embedder(name: str, bundle: Path | None = None, threads: int | None = None, verify: bool = True):
    """The embedder retrieval runs on: the bundle's own artifact for a bundle backend whose bundle has one, else
    the transformers reference (`memlora.embed.Embedder`; a bundle exported with --no-embedder)."""
    if name in EMBEDDER_BACKENDS and bundle is not None:
        from memlora.export.bundle import load_bundle

        if name in load_bundle(Path(bundle), verify=False).manifest.get("embedder", {}).get("targets", {}):
            module = importlib.import_module(EMBEDDER_BACKENDS[name])
            return module.from_bundle(Path(bundle), threads=threads, verify=verify)
    from memlora.embed import Embedder

    if threads:
        _torch_threads(threads)
    return Embedder()


def _torch_threads(threads: int) -> None:
    """Size torch's process-wide pool; called only where torch runs, so a bundle run never imports it."""
    import torch

    torch.set_num_threads(threads)


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
    (the torch backend's and the reference embedder's, where they run) and a bundle runtime's. A bundle
    backend tokenizes with `BundleTokenizer` (no transformers, so no torch); the torch backend with transformers.

    The options are checked and the store is opened first (read-only for verbs that only read it), so a wrong
    option or `--store` fails before a model loads."""
    from memlora.paths import default_model_dir

    backend = choose_backend(backend, bundle, model, adapters)
    memory = MemoryStore(store, read_only=read_only)
    if backend == "torch":
        model = Path(model) if model else default_model_dir()
        if not (model / "config.json").is_file():
            raise MemloraError(f"{model}: no model here; run `memlora setup` (or pass --model DIR)")
        if adapters is None and not no_adapters and model == default_model_dir():
            adapters = default_adapters()
    if threads and backend == "torch":
        _torch_threads(threads)
    be, tok_dir = open_backend(backend, bundle, model, None if no_adapters else adapters, threads=threads)
    constraints = None  # the torch reference compiles its tokenizer's (cached); a bundle run reads the bundle's
    if backend != "torch":
        from memlora.export.bundle import load_bundle

        constraints = load_bundle(Path(bundle), verify=False).constraints  # the backend verified the checksums
    return MemoryPipeline(
        be,
        load_tokenizer(tok_dir) if backend == "torch" else BundleTokenizer(tok_dir),  # a bundle run imports no torch
        memory,
        open_embedder(backend, bundle, threads, verify=False),  # the backend verified the bundle's checksums
        use_adapters=not no_adapters,
        trace=TraceWriter(trace) if trace else None,
        constraints=constraints,
    )
