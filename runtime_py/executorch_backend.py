"""ExecuTorch backend: the ExecuTorch target of a bundle on ``executorch.runtime`` behind `memlora.backend.Backend`.

Each adapter is a `Route` -- a (program, method, gate) triple. A separable bundle has one program with one
method that holds every adapter stacked behind a gate input (see `memlora.export.executorch_export`):
switching adapters passes another gate to the same loaded method, so nothing is reloaded and the base
weights are packed once. Merged bundles have one self-contained program per adapter. Methods are loaded on
first use, so memory grows only with the programs a session actually runs.

Programs return the last position's logits only (see `memlora.export.executorch_export`); a caller that
wants every position's logits gets them by running the chunk one token at a time (same cache, same math).

Entry points: ``from_bundle(bundle_dir)`` (the registry's constructor) and ``ExecuTorchBackend(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from memlora.backend import CheckedBackend
from memlora.errors import MemloraError

BASE_METHOD = "forward"


@dataclass(frozen=True, eq=False)
class Route:
    """Where one adapter runs: a program's method, and the gate input that selects the adapter in a program
    of stacked adapters (None: the method takes tokens and start only)."""

    program: Path
    method: str = BASE_METHOD
    gate: np.ndarray | None = None

    def inputs(self, tokens: list[int], start: int) -> list[torch.Tensor]:
        """The method's inputs for a chunk of `tokens` written from position `start`."""
        args = [torch.tensor([tokens], dtype=torch.int64), torch.tensor([start], dtype=torch.int64)]
        return args if self.gate is None else [*args, torch.from_numpy(self.gate)]


class ExecuTorchBackend(CheckedBackend):
    """Runs programs exported by `memlora.export.executorch_export` with ``executorch.runtime``."""

    name = "executorch"

    def __init__(self, routes: dict[str | None, Route], data_files: dict[Path, Path] | None = None):
        """`routes` maps an adapter name (``None`` = base) to its `Route`; `data_files` maps a ``.pte`` path
        to the ``.ptd`` holding its external weights."""
        from executorch.runtime import Runtime

        from memlora.export.executorch_export import load_custom_ops

        load_custom_ops()  # kernels of torch.ops.llama.update_cache / custom_sdpa
        import executorch.kernels.quantized  # noqa: F401  (int8 embedding gathers)

        runtime = Runtime.get()
        data_files = data_files or {}
        self._programs = {}
        for path in dict.fromkeys(r.program for r in routes.values()):
            data = data_files.get(path)
            try:
                self._programs[path] = runtime.load_program(path, data_path=data)
            except Exception as e:  # the pybinding raises RuntimeError/ValueError for unreadable programs
                what = f"{path} (data {data})" if data else str(path)
                raise MemloraError(f"{what}: ExecuTorch cannot load this program ({e})") from e
        self._data_files = data_files
        self._routes = routes
        self._methods: dict[tuple[Path, str], object] = {}  # adapters sharing a method share its delegates
        self.adapters = tuple(k for k in routes if k is not None)
        first = next(iter(routes.values())).program
        self.max_context = int(self._constant(first, "get_max_seq_len"))
        self.vocab = int(self._constant(first, "get_vocab_size"))

    def _constant(self, path: Path, method: str):
        try:
            return self._programs[path].load_method(method).execute([])[0]
        except Exception as e:
            raise MemloraError(f"{path}: program has no readable {method} metadata method ({e})") from e

    def method(self, adapter: str | None):
        """The loaded method for `adapter`; loading it (and its delegates' weights) on first use."""
        route = self._routes[adapter]
        key = (route.program, route.method)
        if key not in self._methods:
            try:
                self._methods[key] = self._programs[route.program].load_method(route.method)
            except Exception as e:
                data = self._data_files.get(route.program)
                raise MemloraError(
                    f"{data or route.program}: ExecuTorch cannot load method {route.method!r} of "
                    f"{route.program.name} ({e}); the program or its weight data is corrupt or does not belong to it"
                ) from e
        return self._methods[key]

    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        """Positions >= start are overwritten in place and later ones masked out by the program."""
        method = self.method(adapter)
        if all_logits and len(tokens) > 1:
            return np.concatenate([self._run([t], start + i, adapter, False) for i, t in enumerate(tokens)])
        out = method.execute(self._routes[adapter].inputs(tokens, start))
        return out[0].numpy().astype(np.float32, copy=False).reshape(1, -1)


def target_routes(root: Path, target: dict) -> tuple[dict[str | None, Route], dict[Path, Path]]:
    """(routes, data files) of an ExecuTorch manifest entry whose paths are relative to `root`."""
    from memlora.export.lora import gate_vector

    programs = {k: root / f for k, f in target["graphs"].items()}
    data = [root / f for f in target.get("data_files", {}).values()]
    if len(data) > 1:
        raise MemloraError(f"{root}: the ExecuTorch runtime takes one data file per program, bundle lists {len(data)}")
    if target["mode"] == "separable":
        (program,) = programs.values()
        gates = target.get("gates")  # absent: a method per adapter (bundles written before adapters were stacked)

        def gate(adapter: str | None) -> np.ndarray | None:
            if not gates:
                return None
            if adapter is not None and adapter not in gates["adapters"]:
                raise MemloraError(f"{root / 'manifest.json'}: executorch gates list no span for adapter {adapter!r}")
            return gate_vector(gates["width"], None if adapter is None else tuple(gates["adapters"][adapter]))

        routes = {None: Route(program, BASE_METHOD, gate(None)),
                  **{a: Route(program, m, gate(a)) for a, m in target["methods"].items()}}
    else:
        routes = {(None if k == "base" else k): Route(p) for k, p in programs.items()}
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
