"""onnxruntime backend: the ONNX target of a bundle behind the `memlora.backend.Backend` interface.

The KV cache is one pair of full-context OrtValues per layer, owned by the backend and bound with IO
binding as both ``past`` input and ``present`` output of every call, so GroupQueryAttention writes new
entries in place and a decode step copies no cache. The active adapter is chosen per call: in separable
mode one session and one IO binding per adapter with that ``.onnx_adapter``'s parameters bound (switching
costs nothing); in merged mode one session per adapter graph. All share the same cache buffers.

Entry points: ``from_bundle(bundle_dir)`` (the registry's constructor) and ``OnnxBackend(...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memlora.backend import CheckedBackend
from memlora.errors import MemloraError

THREADS = 2


def session_options(threads: int = THREADS, profile_prefix: str | None = None):
    """Two intra-op threads without spinning: on a 2-core phone-class CPU spinning threads steal the core
    the other thread needs, which made decode speed flip between runs. `profile_prefix` turns on
    onnxruntime's per-kernel profiler (files ``<prefix>_<date>.json``; slows every kernel)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # LoRA initializers listed as inputs are intended; don't warn about them
    return opts


class OnnxBackend(CheckedBackend):
    """Runs ONNX decoder graphs exported by `memlora.export.onnx_export` with an in-place KV cache."""

    name = "onnx"

    def __init__(
        self,
        graphs: dict[str | None, Path],
        adapter_files: dict[str, Path] | None = None,
        threads: int = THREADS,
        profile_prefix: str | None = None,
    ):
        """`graphs` maps an adapter name (``None`` = base) to a graph; `adapter_files` maps adapter names to
        ``.onnx_adapter`` files applied on the base graph (separable mode)."""
        import onnxruntime as ort

        self._ort = ort
        opts = session_options(threads, profile_prefix)
        sessions = {}
        for key, path in graphs.items():
            try:
                sessions[key] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
                raise MemloraError(f"{path}: onnxruntime cannot load this graph ({e})") from e
        first = next(iter(sessions.values()))
        self._past = [i.name for i in first.get_inputs() if i.name.startswith("past_key_values.")]
        if not self._past:
            raise MemloraError(f"{next(iter(graphs.values()))}: graph has no past_key_values inputs")
        shape = next(i.shape for i in first.get_inputs() if i.name == self._past[0])
        self.max_context = int(shape[2])
        self.vocab = int(first.get_outputs()[0].shape[-1])
        self._cache = [ort_zeros(shape) for _ in self._past]
        self._step_logits = ort_zeros((1, 1, self.vocab))
        self._mask = np.ones((1, self.max_context), np.int64)  # a call binds its first start + T columns
        # one IO binding per adapter, all over the same cache buffers: switching adapters rebinds nothing.
        # A separable base graph's LoRA inputs default to zeros: the base binds none (`zero_lora`).
        self._runs = {key: (sess, self._bind(sess, zero_lora(sess))) for key, sess in sessions.items()}
        for adapter, path in (adapter_files or {}).items():
            if None not in sessions:
                raise MemloraError(f"{path}: a LoRA adapter file needs a base graph")
            params = read_adapter(path)
            check_adapter(path, params, sessions[None])
            self._runs[adapter] = (sessions[None], self._bind(sessions[None], params))
        self.adapters = tuple(k for k in self._runs if k is not None)

    def _bind(self, session, params: dict):
        """A binding with the cache as past input and present output (one buffer), plus LoRA parameters.

        The parameters of an ``.onnx_adapter`` are bound as inputs: ``run_with_iobinding`` does not apply
        ``RunOptions.add_active_adapter`` (only ``run`` does), and binding them is the same feed."""
        binding = session.io_binding()
        for name, value in zip(self._past, self._cache):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
        for name, value in params.items():
            binding.bind_ortvalue_input(name, value)
        return binding

    def _run(self, tokens: list[int], start: int, adapter: str | None, all_logits: bool) -> np.ndarray:
        """Positions >= start are overwritten in place and later ones masked out (the attention mask covers
        positions 0 .. start + T - 1)."""
        n = len(tokens)
        session, binding = self._runs[adapter]
        binding.bind_cpu_input("input_ids", np.asarray([tokens], np.int64))
        binding.bind_cpu_input("attention_mask", self._mask[:, : start + n])
        rows = n if all_logits else 1
        # an input with a stored default binds as an OrtValue only (bind_cpu_input looks among required inputs)
        first = self._ort.OrtValue.ortvalue_from_numpy(np.array(n - rows, np.int64))
        binding.bind_ortvalue_input("logits_start", first)
        logits = self._step_logits  # reused by every decode step; other sizes get a fresh buffer
        if rows != 1:
            logits = self._ort.OrtValue.ortvalue_from_shape_and_type((1, rows, self.vocab), np.float32)
        binding.bind_ortvalue_output("logits", logits)
        session.run_with_iobinding(binding)
        return logits.numpy()[0].copy()  # the step buffer is reused by the next call


def end_profiling(backend: OnnxBackend) -> list[Path]:
    """Stop the profiler of every session of a backend opened with `profile_prefix`; the trace files."""
    sessions = {id(s): s for s, _ in backend._runs.values()}.values()
    return [Path(s.end_profiling()) for s in sessions]


def zero_lora(session) -> dict:
    """Zero OrtValues for a graph's LoRA inputs that have no stored default (none in a merged graph): the
    adapter-free base model. Graphs that store zero defaults (ours, and ONNX bundles written by memlora
    0.1) list them as overridable initializers instead, which need nothing bound."""
    return {i.name: ort_zeros(i.shape) for i in session.get_inputs() if i.name.startswith("lora.")}


def lora_slots(session) -> dict[str, list]:
    """Every LoRA parameter a graph takes, with its shape: inputs, or initializers with zero defaults."""
    values = [*session.get_inputs(), *session.get_overridable_initializers()]
    return {i.name: list(i.shape) for i in values if i.name.startswith("lora.")}


def ort_zeros(shape):
    import onnxruntime as ort

    return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))


def check_adapter(path: Path, params: dict, session) -> None:
    """An adapter file must fill exactly the graph's LoRA inputs, each with the input's shape."""
    slots = lora_slots(session)
    missing = sorted(set(slots) - set(params))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MemloraError(f"{path}: this adapter has no {missing[0]}{more} that the base graph needs: it was "
                           "exported for another base or another slot layout")
    for name, value in params.items():
        if name not in slots or list(value.shape()) != slots[name]:
            raise MemloraError(f"{path}: parameter {name} {value.shape()} does not fit the base graph's input "
                               f"{slots.get(name, 'none')}: it was exported for another base")


def read_adapter(path: Path) -> dict:
    """The named parameters of an ``.onnx_adapter`` file, as OrtValues."""
    import onnxruntime as ort

    try:
        return dict(ort.AdapterFormat.read_adapter(str(path)).get_parameters())
    except Exception as e:  # onnxruntime raises RuntimeError subclasses of its own
        raise MemloraError(f"{path}: onnxruntime cannot read this LoRA adapter ({e})") from e


def from_bundle(bundle_dir: Path, threads: int | None = None, profile_prefix: str | None = None) -> OnnxBackend:
    """Open the ONNX target of a bundle (checksums and schema verified) as a Backend; `threads` intra-op
    threads (default `THREADS`)."""
    from memlora.export.bundle import load_bundle

    bundle = load_bundle(Path(bundle_dir))
    target = bundle.target("onnx")
    root = bundle.path
    graphs = {(None if k == "base" else k): root / f for k, f in target["graphs"].items()}
    adapters = {k: root / f for k, f in target.get("adapter_files", {}).items()}
    return OnnxBackend(graphs, adapters, threads or THREADS, profile_prefix)
