"""The Markdown summary of a parity report: short enough for a CI job summary or a pull-request comment.

One table row per target (and traced device) with its verdict and the figures a release decision looks at,
the regressions against a baseline when one was given, then every failure line.
"""

from __future__ import annotations

from pathlib import Path

from .report import write_atomic


def _num(value, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def _verdict(passed: bool) -> str:
    return "✅ pass" if passed else "❌ FAIL"


def _target_row(name: str, t: dict) -> str:
    task = t["task"] if isinstance(t["task"], dict) else {}
    size = None if t["size_bytes"] is None else t["size_bytes"] / 1e6
    return (f"| {name} | {t['precision']} {t['mode']} | {_verdict(t['passed'])} | {_num(t['token']['top1_agreement'])} | "
            f"{_num(t['token']['greedy_exact_rate'])} | {_num(t['tensor']['max_abs'], '.3g')} | "
            f"{_num(task.get('answer_f1'))} | {_num(t['gap']['quantization']['kl'], '.2g')} | "
            f"{_num(t['gap']['conversion']['kl'], '.2g')} | {t['first_divergent_layer'] or '–'} | {_num(size, '.1f')} | "
            f"{_num(t['speed']['decode_tok_s'], '.1f')} |")


def _baseline_rows(report: dict) -> list[str]:
    rows = []
    for name, t in report["targets"].items():
        baseline = t.get("baseline") or {}
        if "skipped" in baseline:
            rows.append(f"| {name} | – | – | – | – | – | skipped: {baseline['skipped']} |")
        for metric, r in baseline.get("metrics", {}).items():
            verdict = f"skipped: {r['skipped']}" if "skipped" in r else _verdict("failure" not in r)
            rows.append(f"| {name} | {metric} | {_num(r.get('baseline'))} | {_num(r.get('value'))} | "
                        f"{_num(r.get('change'), '+.4g')} | {r['allowed']} | {verdict} |")
    return rows


def render(report: dict) -> str:
    lines = [f"## memlora parity: {'PASSED ✅' if report['passed'] else 'FAILED ❌'}", "",
             f"Bundle `{report['bundle']}`, {len(report['golden']['prompts'])} golden prompts"
             f"{' (quick)' if report['golden']['quick'] else ''}.", "",
             "| target | precision | verdict | top-1 | greedy exact | max \\|Δlogit\\| | answer F1 | quant KL | conv KL | "
             "first divergent layer | size MB | decode tok/s |",
             "|" + " --- |" * 12]
    lines += [_target_row(n, t) for n, t in report["targets"].items()]
    lines += [f"| trace: {n} | {t['precision']} | {_verdict(t['passed'])} | {_num(t['token']['top1_agreement'])} | "
              f"{_num(t['token']['greedy_exact_rate'])} | {_num((t['tensor'] or {}).get('max_abs'), '.3g')} |"
              + " – |" * 6 for n, t in report["traces"].items()]
    baseline = _baseline_rows(report)
    if baseline:
        lines += ["", f"### Against the baseline `{report['baseline']['report']}`", "",
                  "| target | metric | baseline | now | change | allowed | verdict |", "|" + " --- |" * 7, *baseline]
    failures = [f"- **{name}**: {f}" for name, t in [*report["targets"].items(),
                                                     *(("trace " + k, v) for k, v in report["traces"].items())]
                for f in t["failures"]]
    lines += ["", "### Failures", "", *(failures or ["none"])]
    return "\n".join(lines) + "\n"


def write_summary(report: dict, path: Path) -> None:
    write_atomic(path, render(report))
