"""Pass/fail limits per precision, in one JSON file with shipped defaults a user can override per target.

A limit names a metric as ``level.metric`` (``token.top1_agreement``, ``tensor.max_abs``, ``task.equal_rate``,
``gap.conversion.kl`` ...) and bounds it with ``min`` and/or ``max``. A user file has the same shape as
``thresholds.json``; its ``precisions`` entries are merged over the defaults metric by metric, and its
``targets`` entries (``{"onnx": {"token.top1_agreement": {"min": 0.98}}}``) are merged over the limits of
that target's precision. ``localise`` holds, per precision, the relative hidden-state error (vs the
quantized reference) above which a layer counts as diverged. ``allowances`` bound the regression of a metric
against a baseline report (`baseline.py`): ``{"token.top1_agreement": {"drop": 0.005}}``, one of ``drop`` /
``drop_pct`` (higher is better: it may fall by at most this much, absolute or in percent of the baseline)
or ``grow`` / ``grow_pct`` (lower is better); a user file's entries replace the defaults metric by metric.

Every limit must name a metric the report has (`METRICS`): a misspelt or renamed metric is an error, never a
limit that silently checks nothing. A metric that was asked for but came out null is a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from memlora import OPERATIONS
from memlora.errors import MemloraError

DEFAULTS = Path(__file__).with_name("thresholds.json")
SCHEMA = "memlora-parity-thresholds/1"

_TENSOR = ("max_abs", "mean_abs", "cosine", "kl", "sqnr_db")
_GAP = ("max_abs", "mean_abs", "kl", "sqnr_db", "top1_agreement")
METRICS = frozenset([
    *(f"tensor.{m}" for m in _TENSOR),
    *(f"tensor_by_phase.{phase}.{m}" for phase in ("prefill", "decode") for m in _TENSOR),
    "token.top1_agreement", "token.top5_overlap", "token.greedy_exact_rate",
    *(f"token.top1_by_op.{op}" for op in OPERATIONS),
    "task.equal_rate", "task.answer_exact", "task.answer_f1", *(f"task.equal_by_op.{op}" for op in OPERATIONS),
    *(f"gap.{part}.{m}" for part in ("quantization", "conversion") for m in _GAP),
    "size_bytes", "speed.prefill_tok_s", "speed.decode_tok_s",
    "embedder.cosine_min", "embedder.cosine_mean", "embedder.retrieval_agreement",
])
"""Every numeric field of a target's report that a limit can name (docs/parity.md, JSON report)."""
OPTIONAL_LEVELS = frozenset(["embedder"])
"""Levels a report may lack altogether (reports written before the level existed): their limits check nothing
there, as for a level that was not run; a field missing inside a level that is there is still an error."""
TRACE_METRICS = frozenset(["token.top1_agreement", "token.top5_overlap", "token.greedy_exact_rate", "tensor.max_abs"])
"""The part of `METRICS` a device trace's replay measures; other limits of its precision do not apply to it."""
ALLOWANCES = ("drop", "drop_pct", "grow", "grow_pct")
"""How far a metric may move against a baseline: fall (higher is better) or rise (lower is better), absolute or %."""


@dataclass(frozen=True)
class Thresholds:
    precisions: dict[str, dict[str, dict[str, float]]]
    localise: dict[str, float]
    targets: dict[str, dict[str, dict[str, float]]]
    allowances: dict[str, dict[str, float]]

    def limits(self, target: str, precision: str) -> dict[str, dict[str, float]]:
        """The limits that apply to `target` at `precision` (precision defaults, then the target's overrides)."""
        if precision not in self.precisions:
            raise MemloraError(f"no thresholds for precision {precision!r} (have {', '.join(self.precisions)})")
        return _merge(self.precisions[precision], self.targets.get(target, {}))

    def layer_tolerance(self, precision: str) -> float:
        return self.localise.get(precision, max(self.localise.values()))


def _merge(base: dict, over: dict) -> dict:
    out = {k: dict(v) for k, v in base.items()}
    for metric, bound in over.items():
        out.setdefault(metric, {}).update(bound)
    return out


def _read(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise MemloraError(f"{path}: cannot read thresholds ({e.strerror})") from e
    except ValueError as e:
        raise MemloraError(f"{path}: thresholds are not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("schema", SCHEMA) != SCHEMA:
        raise MemloraError(f"{path}: not a thresholds file (expected schema {SCHEMA!r})")
    for section in ("precisions", "targets"):
        for name, limits in data.get(section, {}).items():
            for metric, bound in limits.items():
                if metric not in METRICS:
                    raise MemloraError(f"{path}: {section}.{name}.{metric}: {_unknown(metric)}")
                if not isinstance(bound, dict) or not set(bound) <= {"min", "max"} or not bound:
                    raise MemloraError(f"{path}: {section}.{name}.{metric} must be {{'min': x}} and/or {{'max': y}}")
    for metric, allowed in data.get("allowances", {}).items():
        if metric not in METRICS:
            raise MemloraError(f"{path}: allowances.{metric}: {_unknown(metric)}")
        if (not isinstance(allowed, dict) or len(allowed) != 1 or not set(allowed) <= set(ALLOWANCES)
                or not isinstance(*allowed.values(), (int, float)) or min(allowed.values()) < 0):
            raise MemloraError(f"{path}: allowances.{metric} must be one of {', '.join(ALLOWANCES)} with a number >= 0, "
                               "e.g. {'drop': 0.005}")
    return data


def _unknown(metric: str) -> str:
    return f"no metric {metric!r} in a parity report (see docs/parity.md for the metrics a limit can name)"


def load_thresholds(path: Path | None = None) -> Thresholds:
    """The shipped defaults, with `path` (if given) merged over them."""
    data = _read(DEFAULTS)
    if path is not None:
        user = _read(path)
        for precision, limits in user.get("precisions", {}).items():
            data["precisions"][precision] = _merge(data["precisions"].get(precision, {}), limits)
        data["localise"].update(user.get("localise", {}))
        data["targets"] = {t: _merge(data["targets"].get(t, {}), lim) for t, lim in user.get("targets", {}).items()}
        data["allowances"].update(user.get("allowances", {}))
    return Thresholds(data["precisions"], data["localise"], data["targets"], data["allowances"])


def lookup(metrics: dict, metric: str) -> tuple[bool, object]:
    """``(asked, value)`` of a dotted metric: ``asked`` is False when its level was not run (the level is null:
    ``run_parity(..., task=False)``, a trace without top-k logits); ``value`` is None when the level was
    skipped (``{"skipped": reason}``) or the metric came out null. A field the report lacks is an error:
    a renamed report key must not turn its limits into no-ops."""
    level, *rest = metric.split(".")
    if level in OPTIONAL_LEVELS and level not in metrics:
        return False, None
    if level not in metrics:
        raise MemloraError(f"threshold {metric}: the report has no {level!r} level")
    value = metrics[level]
    if rest and value is None:
        return False, None
    for part in rest:
        # a skipped level holds only its reason; a per-operation map leaves out an operation with no prompt
        if isinstance(value, dict) and part not in value and ("skipped" in value or part in OPERATIONS):
            return True, None
        if not isinstance(value, dict) or part not in value:
            raise MemloraError(f"threshold {metric}: the report's {level} level has no {part!r}")
        value = value[part]
    return True, value


def check(metrics: dict, limits: dict[str, dict[str, float]], measures: frozenset[str] = METRICS) -> list[str]:
    """The limits `metrics` break, as readable lines; a limit on a metric that was asked for and not measured
    is broken too. `measures` is what this kind of report measures (`TRACE_METRICS` for a device trace)."""
    failures = []
    for metric, bound in limits.items():
        if metric not in METRICS:
            raise MemloraError(f"threshold {metric}: {_unknown(metric)}")
        if metric not in measures:
            continue
        asked, value = lookup(metrics, metric)
        if not asked:
            continue
        if value is None:
            level = metrics[metric.split(".")[0]]
            reason = level.get("skipped") if isinstance(level, dict) else None
            failures.append(f"{metric} was not measured" + (f" ({reason})" if reason else ""))
            continue
        if "min" in bound and value < bound["min"]:
            failures.append(f"{metric} = {value:.6g} < {bound['min']:g}")
        if "max" in bound and value > bound["max"]:
            failures.append(f"{metric} = {value:.6g} > {bound['max']:g}")
    return failures
