"""llama.cpp backend: the GGUF target of a bundle behind the `memlora.backend.Backend` interface.

One model, one context (one sequence, F32 KV cache, flash attention off so attention is computed in F32 as
the reference does), and every adapter's GGUF LoRA file loaded once; switching adapters (only ever at
position 0) is one ``llama_set_adapters_lora`` call, the same call an app embedding llama.cpp makes. Calls
go through llama-cpp-python's ctypes bindings of the C API, so what runs here is what a phone app links.
Rewinding drops the cache's positions >= start (``llama_memory_seq_rm``) before the new tokens are decoded.

Entry points: ``from_bundle(bundle_dir)`` (the registry's constructor) and ``GgufBackend(...)``.
"""

from __future__ import annotations

import collections
import ctypes
from pathlib import Path

import numpy as np

from memlora.backend import CheckedBackend
from memlora.errors import MemloraError

REQUIREMENT = "llama-cpp-python==0.3.36"
"""The llama.cpp this backend is tested with (scripts/bootstrap.sh builds it; the bench's peer too)."""
THREADS = 2
UBATCH = 512
"""Tokens llama.cpp computes per graph run; a longer call is split (its logits are the same)."""
_LOG: collections.deque[str] = collections.deque(maxlen=20)
"""llama.cpp's recent warnings and errors: why a load failed, for the error message."""


def _bindings():
    """llama-cpp-python, with llama.cpp's log routed into `_LOG` instead of stderr (imported on first use)."""
    try:
        import llama_cpp
    except ImportError as e:
        raise MemloraError(f"the gguf backend needs {REQUIREMENT}: run scripts/bootstrap.sh (it builds it from "
                           "its sdist once and caches the wheel), or pip install it") from e
    if not getattr(_bindings, "ready", False):
        @llama_cpp.llama_log_callback
        def log(level: int, text: bytes, _user) -> None:
            if level >= 3:  # GGML_LOG_LEVEL_WARN, _ERROR, _CONT
                _LOG.append(text.decode("utf-8", "replace").strip())

        _bindings.callback = log  # ctypes must keep the callback alive
        llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _bindings.ready = True
    return llama_cpp


def _why() -> str:
    said = [line for line in _LOG if line]
    _LOG.clear()
    return said[-1] if said else "no message from llama.cpp"


class GgufBackend(CheckedBackend):
    """Runs a GGUF base model with GGUF LoRA adapters applied at run time by llama.cpp."""

    name = "gguf"

    def __init__(self, model: Path, adapter_files: dict[str, Path], max_context: int, threads: int = THREADS):
        lib = self._lib = _bindings()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0
        _LOG.clear()
        self._model = lib.llama_model_load_from_file(str(model).encode(), mparams)
        if not self._model:
            raise MemloraError(f"{model}: llama.cpp cannot load this GGUF model ({_why()})")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model))
        self.max_context = max_context
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max_context
        cparams.n_batch = max_context  # one call is one llama_decode
        cparams.n_ubatch = min(UBATCH, max_context)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.type_k = cparams.type_v = lib.GGML_TYPE_F32
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise MemloraError(f"{model}: llama.cpp cannot create a context of {max_context} positions ({_why()})")
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(max_context, 0, 1)
        self._loras = {}
        for name, path in adapter_files.items():
            lora = lib.llama_adapter_lora_init(self._model, str(path).encode())
            if not lora:
                raise MemloraError(f"{path}: llama.cpp cannot apply this LoRA adapter to {model.name} ({_why()}): "
                                   "it is not a GGUF LoRA file of this base")
            self._loras[name] = lora
        self.adapters = tuple(self._loras)
        self._active: str | None = None

    def _activate(self, adapter: str | None) -> None:
        if adapter == self._active:
            return
        lib = self._lib
        if adapter is None:
            rc = lib.llama_set_adapters_lora(self._ctx, None, 0, None)
        else:
            loras = (lib.llama_adapter_lora_p_ctypes * 1)(self._loras[adapter])
            rc = lib.llama_set_adapters_lora(self._ctx, loras, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise MemloraError(f"gguf: llama.cpp refused to activate adapter {adapter!r} ({_why()})")
        self._active = adapter

    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        lib, batch, n = self._lib, self._batch, len(tokens)
        self._activate(adapter)
        lib.llama_memory_seq_rm(self._memory, 0, start, -1)
        for j, token in enumerate(tokens):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = token, start + j, 1
            batch.seq_id[j][0] = 0
            batch.logits[j] = all_logits or j == n - 1
        batch.n_tokens = n
        rc = lib.llama_decode(self._ctx, batch)
        if rc != 0:
            raise MemloraError(f"gguf: llama_decode of positions {start}..{start + n - 1} failed ({rc}: {_why()})")
        rows = n if all_logits else 1
        out = np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(rows * self.vocab,))
        return out.reshape(rows, self.vocab).copy()

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None or not getattr(self, "_model", None):
            return
        if getattr(self, "_ctx", None):
            lib.llama_batch_free(self._batch)
            lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)  # frees the adapters loaded on it too


def from_bundle(bundle_dir: Path, threads: int | None = None) -> GgufBackend:
    """Open the GGUF target of a bundle (checksums and schema verified) as a Backend."""
    from memlora.export.bundle import load_bundle

    bundle = load_bundle(Path(bundle_dir))
    target = bundle.target("gguf")
    root = bundle.path
    adapters = {k: root / f for k, f in target.get("adapter_files", {}).items()}
    return GgufBackend(root / target["graphs"]["base"], adapters, target["max_context"], threads or THREADS)
