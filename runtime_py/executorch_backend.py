"""ExecuTorch backend: the ExecuTorch target of a bundle on ``executorch.runtime`` behind `memlora.backend.Backend`.

Each adapter is a *route* -- a (program, method) pair. Separable bundles have one program whose methods
(``forward`` = base, one per adapter) share the KV cache and the base weights of one ``foundation.ptd``:
switching adapters calls another already-loaded method, nothing is reloaded or copied. Merged bundles
have one self-contained program per adapter. Methods are loaded on first use, so memory grows only with
the adapters a session actually runs.

Programs return the last position's logits only (see `memlora.export.executorch_export`); a caller that
wants every position's logits gets them by running the chunk one token at a time (same cache, same math).

Entry points: ``from_bundle(bundle_dir)`` (the registry's constructor) and ``ExecuTorchBackend(...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memlora.backend import CheckedBackend
from memlora.errors import MemloraError

BASE_METHOD = "forward"


class ExecuTorchBackend(CheckedBackend):
    """Runs programs exported by `memlora.export.executorch_export` with ``executorch.runtime``."""

    name = "executorch"

    def __init__(self, routes: dict[str | None, tuple[Path, str]], data_files: dict[Path, Path] | None = None):
        """`routes` maps an adapter name (``None`` = base) to (``.pte`` path, method name); `data_files`
        maps a ``.pte`` path to the ``.ptd`` holding its external weights."""
        from executorch.runtime import Runtime

        from memlora.export.executorch_export import load_custom_ops

        load_custom_ops()  # kernels of torch.ops.llama.update_cache / custom_sdpa
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding gathers)

        runtime = Runtime.get()
        data_files = data_files or {}
        self._programs = {}
        for path in dict.fromkeys(p for p, _ in routes.values()):
            data = data_files.get(path)
            try:
                self._programs[path] = runtime.load_program(path, data_path=data)
            except Exception as e:  # the pybinding raises RuntimeError/ValueError for unreadable programs
                what = f"{path} (data {data})" if data else str(path)
                raise MemloraError(f"{what}: ExecuTorch cannot load this program ({e})") from e
        self._data_files = data_files
        self._routes = routes
        self._methods: dict[str | None, object] = {}
        self.adapters = tuple(k for k in routes if k is not None)
        first = next(iter(routes.values()))
        self.max_context = int(self._constant(first[0], "get_max_seq_len"))
        self.vocab = int(self._constant(first[0], "get_vocab_size"))

    def _constant(self, path: Path, method: str):
        try:
            return self._programs[path].load_method(method).execute([])[0]
        except Exception as e:
            raise MemloraError(f"{path}: program has no readable {method} metadata method ({e})") from e

    def method(self, adapter: str | None):
        """The loaded method for `adapter`; loading it (and its delegates' weights) on first use."""
        if adapter not in self._methods:
            path, name = self._routes[adapter]
            try:
                self._methods[adapter] = self._programs[path].load_method(name)
            except Exception as e:
                data = self._data_files.get(path)
                raise MemloraError(
                    f"{data or path}: ExecuTorch cannot load method {name!r} of {path.name} ({e}); "
                    "the program or its weight data is corrupt or does not belong to it"
                ) from e
        return self._methods[adapter]

    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        """Positions >= start are overwritten in place and later ones masked out by the program."""
        method = self.method(adapter)
        if all_logits and len(tokens) > 1:
            return np.concatenate([self._run([t], start + i, adapter, False) for i, t in enumerate(tokens)])
        out = method.execute([torch.tensor([tokens], dtype=torch.int64), torch.tensor([start], dtype=torch.int64)])
        return out[0].numpy().astype(np.float32, copy=False).reshape(1, -1)


def target_routes(root: Path, target: dict) -> tuple[dict, dict]:
    """(routes, data files) of an ExecuTorch manifest entry whose paths are relative to `root`."""
    programs = {k: root / f for k, f in target["graphs"].items()}
    data = [root / f for f in target.get("data_files", {}).values()]
    if len(data) > 1:
        raise MemloraError(f"{root}: the ExecuTorch runtime takes one data file per program, bundle lists {len(data)}")
    if target["mode"] == "separable":
        (program,) = programs.values()
        routes = {None: (program, BASE_METHOD), **{a: (program, m) for a, m in target["methods"].items()}}
    else:
        routes = {(None if k == "base" else k): (p, BASE_METHOD) for k, p in programs.items()}
    return routes, ({p: data[0] for p in programs.values()} if data else {})


def from_bundle(bundle_dir: Path, threads: int | None = None) -> ExecuTorchBackend:
    """Open the ExecuTorch target of a bundle (checksums and schema verified) as a Backend; `threads` resizes
    the runtime's process-wide threadpool (XNNPACK's kernels run on it)."""
    from memlora.export.bundle import load_bundle

    if threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)
    bundle = load_bundle(Path(bundle_dir))
    return ExecuTorchBackend(*target_routes(bundle.path, bundle.target("executorch")))
