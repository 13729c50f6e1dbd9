"""`memlora parity --baseline OLD.json [--bench BENCH.json]`: gate the regression of each metric the thresholds'
``allowances`` name against an earlier report of the same model, target by target.

Decisions: a baseline of another model (its report's ``model`` differs) is an error -- the comparison would
mean nothing, so it is a misconfigured job; a target the baseline lacks is a reported skip (adding a target is
a normal change); a target whose precision or mode changed is compared all the same, with the change named
(``baseline.changed``): a release that swaps in a lossier bundle is what the gate is for. Speed is compared
only when both reports took it from `memlora bench` (``speed.source``): the speed a parity run measures beside its
references is indicative only, and gating on it would make the job flap.
"""

from __future__ import annotations

import json
from pathlib import Path

from memlora.errors import MemloraError

from .thresholds import lookup

REPORT_PREFIX = "memlora-parity-report/"
BENCH_SOURCE = "memlora bench"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise MemloraError(f"{path}: cannot read the {what} ({e.strerror})") from e
    except ValueError as e:
        raise MemloraError(f"{path}: the {what} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise MemloraError(f"{path}: not a {what}")
    return data


def load_baseline(path: Path) -> dict:
    """An earlier `memlora parity --json` report, with the model facts this comparison needs."""
    data = _read_json(path, "baseline report")
    if not str(data.get("schema", "")).startswith(REPORT_PREFIX) or not isinstance(data.get("targets"), dict):
        raise MemloraError(f"{path}: not a memlora parity report (no schema {REPORT_PREFIX}...)")
    if "model" not in data:
        raise MemloraError(f"{path}: the baseline report names no model (written before reports did); "
                           "rerun memlora parity on the baseline bundle")
    return data


def same_model(baseline: dict, model: dict, path: Path) -> None:
    """Refuse a baseline of another model: `model` is the manifest's (name and the facts a report records)."""
    if any(baseline["model"].get(k) != model.get(k) for k in baseline["model"]):
        raise MemloraError(f"{path}: the baseline is a report on model {baseline['model'].get('name')!r} "
                           f"({baseline['model']}), not on this bundle's {model.get('name')!r}")


def load_bench(path: Path) -> list[dict]:
    """The rows of a `memlora bench --json` run."""
    rows = _read_json(path, "bench results").get("results")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MemloraError(f"{path}: not memlora bench results (no 'results' list)")
    return rows


def apply_bench(report: dict, rows: list[dict], path: Path) -> None:
    """Take each target's speed from bench rows measured on the same bundle (matched by target name and
    bundle path); a target the bench did not measure keeps the parity run's own figures."""
    bundle = Path(report["bundle"]).resolve()
    for name, target in report["targets"].items():
        row = next((r for r in rows if r.get("target") == name and "error" not in r
                    and Path(str(r.get("bundle"))).resolve() == bundle), None)
        if row is not None:
            target["speed"] = {"prefill_tok_s": row["prefill_tok_s"], "decode_tok_s": row["decode_tok_s"],
                               "source": f"{BENCH_SOURCE} {path}"}


def _allowed(kind: str, amount: float) -> str:
    return {"drop": f"drop <= {amount:g}", "drop_pct": f"drop <= {amount:g}%",
            "grow": f"growth <= {amount:g}", "grow_pct": f"growth <= {amount:g}%"}[kind]


def _regressed(kind: str, amount: float, old: float, new: float) -> bool:
    fall, rise = old - new, new - old
    if kind.endswith("_pct"):
        if old == 0:
            return (fall if kind == "drop_pct" else rise) > 0
        fall, rise = 100 * fall / abs(old), 100 * rise / abs(old)
    return (fall if kind.startswith("drop") else rise) > amount


def _metric(metric: str, kind: str, amount: float, old_entry: dict, entry: dict, path: Path) -> dict:
    """One allowance on one target: the baseline, the value, the change and, past the allowance, a failure."""
    allowed = _allowed(kind, amount)
    if metric.startswith("speed.") and not all(str(e["speed"].get("source", "")).startswith(BENCH_SOURCE)
                                               for e in (old_entry, entry)):
        return {"allowed": allowed, "skipped": "speed is compared only when both reports have it from memlora bench (--bench)"}
    try:
        old = lookup(old_entry, metric)[1]
    except MemloraError as e:
        raise MemloraError(f"{path}: {e}") from e
    new = lookup(entry, metric)[1]
    if old is None or new is None:
        where = "the baseline" if old is None else "this run"
        return {"allowed": allowed, "baseline": old, "value": new, "skipped": f"not measured in {where}"}
    result = {"allowed": allowed, "baseline": old, "value": new, "change": new - old}
    if _regressed(kind, amount, old, new):
        result["failure"] = f"baseline: {metric} = {new:.6g}, was {old:.6g} ({new - old:+.6g}); allowed {allowed}"
    return result


def compare(report: dict, baseline: dict, path: Path, allowances: dict[str, dict[str, float]]) -> None:
    """Add ``baseline`` to the report and to each target; a regression past its allowance fails the target."""
    same_model(baseline, report["model"], path)
    report["baseline"] = {"report": str(path)}
    for name, entry in report["targets"].items():
        old_entry = baseline["targets"].get(name)
        if old_entry is None:
            entry["baseline"] = {"skipped": "the baseline has no such target"}
            continue
        metrics = {m: _metric(m, *next(iter(a.items())), old_entry, entry, path) for m, a in allowances.items()}
        entry["baseline"] = {"metrics": metrics}
        changed = [f"{k} was {old_entry.get(k)}, is {entry[k]}" for k in ("precision", "mode") if old_entry.get(k) != entry[k]]
        if changed:  # a re-quantized release is held to what the last release gave, and says why it differs
            entry["baseline"]["changed"] = ", ".join(changed)
        entry["failures"] += [r["failure"] for r in metrics.values() if "failure" in r]
        entry["passed"] = not entry["failures"]
    report["passed"] = all(e["passed"] for e in [*report["targets"].values(), *report["traces"].values()])
