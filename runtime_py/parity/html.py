"""The HTML report: one self-contained file (plots are PNGs embedded as base64) for people to read.

Sections: verdict and per-target metrics, failures and localisation, per-position logit error, agreement
per operation (token and task level), per-layer hidden-state error of localised targets, size and speed.
"""

from __future__ import annotations

import base64
import html
import io
import json

from .report import write_atomic


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _position_plot(report: dict) -> str:
    import matplotlib.pyplot as plt

    targets = report["targets"]
    fig, axes = plt.subplots(len(targets), 1, figsize=(9, 2.6 * len(targets)), squeeze=False)
    for ax, (name, t) in zip(axes[:, 0], targets.items()):
        for label, curve in t["per_position"].items():
            ax.plot(range(len(curve)), [max(v, 1e-9) for v in curve], lw=0.8, label=label)
        ax.set_yscale("log")
        ax.set_title(f"{name} ({t['precision']}): max |Δ logit| vs fp32 reference, per position")
        ax.set_xlabel("position (prompt, then teacher-forced decode steps)")
        ax.legend(fontsize=6, ncol=3)
    return _png(fig)


def _op_plot(report: dict) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    targets = report["targets"]
    ops = ["extract", "mem_update", "answer"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    width = 0.8 / max(len(targets), 1)
    for i, (name, t) in enumerate(targets.items()):
        token = [t["token"]["top1_by_op"].get(op, np.nan) for op in ops]
        task = [(t["task"] or {}).get("equal_by_op", {}).get(op, np.nan) for op in ops]
        x = np.arange(len(ops)) + i * width
        axes[0].bar(x, token, width, label=name)
        axes[1].bar(x, task, width, label=name)
    for ax, title in zip(axes, ("token: top-1 agreement", "task: equal items")):
        ax.set_xticks(np.arange(len(ops)) + width * (len(targets) - 1) / 2, ops)
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _png(fig)


def _layer_plot(name: str, loc: dict) -> str:
    import matplotlib.pyplot as plt

    errs = loc["relative_errors"]
    fig, ax = plt.subplots(figsize=(9, 2.6))
    ax.bar(range(len(errs)), [max(v, 1e-12) for v in errs.values()],
           color=["tab:red" if k == loc["layer"] else "tab:blue" for k in errs])
    ax.axhline(loc["tolerance"], color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(errs)), list(errs), rotation=90, fontsize=6)
    ax.set_title(f"{name}: relative hidden-state error vs decoder reference (first divergent: {loc['layer']})")
    return _png(fig)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def render(report: dict) -> str:
    e = html.escape
    rows = []
    for name, t in report["targets"].items():
        task = t["task"] or {}
        q, c = t["gap"]["quantization"], t["gap"]["conversion"]
        rows.append("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in [
            name, t["precision"], t["mode"], t["tensor"]["max_abs"], t["tensor"]["mean_abs"], t["tensor"]["cosine"],
            t["tensor"]["kl"], t["tensor"]["sqnr_db"], t["token"]["top1_agreement"], t["token"]["top5_overlap"],
            t["token"]["greedy_exact_rate"], json.dumps(t["token"]["first_divergence"]), task.get("equal_rate"),
            task.get("answer_f1"), q["kl"], c["kl"], t["first_divergent_layer"],
            "PASS" if t["passed"] else "FAIL"]) + "</tr>")
    head = ("target precision mode max|Δ| mean|Δ| cosine KL SQNR(dB) top-1 top-5 greedy-exact first-divergence "
            "task-equal answer-F1 quant-KL conv-KL first-divergent-layer result").split()
    sizes = "".join(
        f"<tr><td>{e(n)}</td><td>{_cell(None if t['size_bytes'] is None else t['size_bytes'] / 1e6)}</td>"
        f"<td>{_cell(t['speed']['prefill_tok_s'])}</td><td>{_cell(t['speed']['decode_tok_s'])}</td></tr>"
        for n, t in report["targets"].items())
    failures = "".join(f"<li><b>{e(n)}</b>: {e(f)}</li>" for n, t in report["targets"].items() for f in t["failures"])
    failures += "".join(f"<li><b>trace {e(n)}</b>: {e(f)}</li>" for n, t in report["traces"].items() for f in t["failures"])
    layers = "".join(_layer_plot(n, t["localisation"]) for n, t in report["targets"].items()
                     if t["localisation"] and t["localisation"].get("relative_errors"))
    traces = "".join(f"<tr><td>{e(n)}</td><td>{t['records']}</td><td>{_cell(t['token']['top1_agreement'])}</td>"
                     f"<td>{_cell(t['token']['greedy_exact_rate'])}</td><td>{_cell((t['tensor'] or {}).get('max_abs'))}</td>"
                     f"<td>{'PASS' if t['passed'] else 'FAIL'}</td></tr>" for n, t in report["traces"].items())
    verdict = "PASSED" if report["passed"] else "FAILED"
    plots = (_position_plot(report) + _op_plot(report)) if report["targets"] else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>memlora parity: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px}} .PASSED{{color:#070}} .FAILED{{color:#b00}}</style></head><body>
<h1>memlora parity: <span class="{verdict}">{verdict}</span></h1>
<p>bundle <code>{e(report['bundle'])}</code>; references: {e(report['reference']['fp32'])} and
{e(report['reference']['decoder'])}; {len(report['golden']['prompts'])} golden prompts,
{report['golden']['decode_tokens']} teacher-forced decode steps each{' (quick)' if report['golden']['quick'] else ''}.</p>
<h2>Targets</h2><table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>
<h2>Failures</h2><ul>{failures or '<li>none</li>'}</ul>
{'<h2>Device traces</h2><table><tr><th>backend</th><th>records</th><th>top-1</th><th>greedy exact</th><th>top-k max|Δ|</th><th>result</th></tr>' + traces + '</table>' if traces else ''}
<h2>Logit error per position</h2>{plots}
{'<h2>Localisation</h2>' + layers if layers else ''}
<h2>Size and speed</h2><p>Speed as measured inside the parity run (prefill chunks and single-token decode steps).</p>
<table><tr><th>target</th><th>size (MB)</th><th>prefill tok/s</th><th>decode tok/s</th></tr>{sizes}</table>
</body></html>
"""


def write_html(report: dict, path) -> None:
    write_atomic(path, render(report))
