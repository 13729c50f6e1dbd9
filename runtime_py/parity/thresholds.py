"""Pass/fail limits per precision, in one JSON file with shipped defaults a user can override per target.

A limit names a metric as ``level.metric`` (``token.top1_agreement``, ``tensor.max_abs``, ``task.equal_rate``,
``gap.conversion.kl`` ...) and bounds it with ``min`` and/or ``max``. A user file has the same shape as
``thresholds.json``; its ``precisions`` entries are merged over the defaults metric by metric, and its
``targets`` entries (``{"onnx": {"token.top1_agreement": {"min": 0.98}}}``) are merged over the limits of
that target's precision. ``localise`` holds, per precision, the relative hidden-state error (vs the
quantized reference) above which a layer counts as diverged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from memlora.errors import MemloraError

DEFAULTS = Path(__file__).with_name("thresholds.json")
SCHEMA = "memlora-parity-thresholds/1"


@dataclass(frozen=True)
class Thresholds:
    precisions: dict[str, dict[str, dict[str, float]]]
    localise: dict[str, float]
    targets: dict[str, dict[str, dict[str, float]]]

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
                if not isinstance(bound, dict) or not set(bound) <= {"min", "max"} or not bound:
                    raise MemloraError(f"{path}: {section}.{name}.{metric} must be {{'min': x}} and/or {{'max': y}}")
    return data


def load_thresholds(path: Path | None = None) -> Thresholds:
    """The shipped defaults, with `path` (if given) merged over them."""
    data = _read(DEFAULTS)
    if path is not None:
        user = _read(path)
        for precision, limits in user.get("precisions", {}).items():
            data["precisions"][precision] = _merge(data["precisions"].get(precision, {}), limits)
        data["localise"].update(user.get("localise", {}))
        data["targets"] = {t: _merge(data["targets"].get(t, {}), lim) for t, lim in user.get("targets", {}).items()}
    return Thresholds(data["precisions"], data["localise"], data["targets"])


def lookup(metrics: dict, dotted: str):
    """``metrics["token"]["top1_agreement"]`` for ``"token.top1_agreement"``; None when not measured."""
    value = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check(metrics: dict, limits: dict[str, dict[str, float]]) -> list[str]:
    """The limits `metrics` break, as readable lines; a metric that was not measured is skipped."""
    failures = []
    for metric, bound in limits.items():
        value = lookup(metrics, metric)
        if value is None:
            continue
        if "min" in bound and value < bound["min"]:
            failures.append(f"{metric} = {value:.6g} < {bound['min']:g}")
        if "max" in bound and value > bound["max"]:
            failures.append(f"{metric} = {value:.6g} > {bound['max']:g}")
    return failures
