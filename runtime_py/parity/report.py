"""The JSON report (for CI gates) and the short stdout table; both written from the dict `run_parity` returns."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write beside `path` and rename into place, so a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(report: dict, path: Path) -> None:
    write_atomic(path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _embedder_lines(targets: dict) -> list[str]:
    """The retrieval embedder's rows (targets whose bundle carries one): cosine to the reference, top-k agreement."""
    rows = [(name, t, t.get("embedder")) for name, t in targets.items() if t.get("embedder")]
    if not rows:
        return []
    head = f"{'embedder':<12}{'prec':<6}{'cos min':>10}{'cos mean':>10}{'top-k agree':>13}  result"
    lines = ["", head, "-" * len(head)]
    for name, t, e in rows:
        if "skipped" in e:
            lines.append(f"{name:<12}{'':<6}{'':>10}{'':>10}{'':>13}  skipped: {e['skipped']}")
            continue
        failed = any(f.startswith("embedder.") for f in t["failures"])
        lines.append(f"{name:<12}{e['precision']:<6}{e['cosine_min']:>10.6f}{e['cosine_mean']:>10.6f}"
                     f"{e['retrieval_agreement']:>13.0%}  {'FAIL' if failed else 'PASS'}")
    return lines


def table(report: dict) -> str:
    """One line per target (and per traced device): the numbers a release decision looks at."""
    head = (f"{'target':<12}{'prec':<6}{'max|dl|':>9}{'top1':>8}{'greedy':>8}{'task':>7}{'ansF1':>7}"
            f"{'quantKL':>10}{'convKL':>10}  {'layer':<14}result")
    lines = [head, "-" * len(head)]
    for name, t in report["targets"].items():
        task = t["task"] or {}
        lines.append(
            f"{name:<12}{t['precision']:<6}{_fmt(t['tensor']['max_abs'], '.2e'):>9}"
            f"{_fmt(t['token']['top1_agreement'], '.1%'):>8}{_fmt(t['token']['greedy_exact_rate'], '.0%'):>8}"
            f"{_fmt(task.get('equal_rate'), '.0%'):>7}{_fmt(task.get('answer_f1'), '.2f'):>7}"
            f"{_fmt(t['gap']['quantization']['kl'], '.1e'):>10}{_fmt(t['gap']['conversion']['kl'], '.1e'):>10}"
            f"  {t['first_divergent_layer'] or '-':<14}{'PASS' if t['passed'] else 'FAIL'}")
    for name, t in report["traces"].items():
        lines.append(f"{'trace:' + name:<12}{t['precision']:<6}{_fmt((t['tensor'] or {}).get('max_abs'), '.2e'):>9}"
                     f"{_fmt(t['token']['top1_agreement'], '.1%'):>8}{_fmt(t['token']['greedy_exact_rate'], '.0%'):>8}"
                     f"{'':>7}{'':>7}{'':>10}{'':>10}  {'-':<14}{'PASS' if t['passed'] else 'FAIL'}")
    lines += _embedder_lines(report["targets"])
    for name, t in [*report["targets"].items(), *(("trace:" + k, v) for k, v in report["traces"].items())]:
        for failure in t["failures"]:
            lines.append(f"  {name}: {failure}")
    lines.append(f"parity: {'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)
