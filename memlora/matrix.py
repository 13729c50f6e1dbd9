"""`memlora matrix`: the release matrix -- export the model for every target x mode x precision the exporters
accept, run parity on each, and write the table a release is judged by (`docs/matrix.md`).

Each row is exported into its own bundle, judged by `run_parity`, and recorded in a JSON results file as soon
as it is done (written aside and renamed), so a long run that is interrupted keeps its finished rows and
`--rows` reruns only the rows named. The Markdown table is regenerated from the results file every time.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from memlora import __version__
from memlora.errors import MemloraError
from memlora.options import Adapters, Model

RESULTS_SCHEMA = "memlora-matrix/1"
KEY_FIGURES = ("token.top1_agreement", "token.greedy_exact_rate", "tensor.max_abs", "task.equal_rate",
               "task.answer_f1", "gap.conversion.kl")


@dataclass(frozen=True)
class Row:
    target: str
    mode: str
    quant: str

    @property
    def key(self) -> str:
        return f"{self.target}:{self.mode}:{self.quant}"


def all_rows(block_size: int = 32) -> list[Row]:
    """Every target x mode x quant the exporters accept, one row per distinct recipe (Core ML's ``fp32`` is
    its ``fp16``, so it is not a row of its own)."""
    from memlora.export import target as exporters

    rows = []
    for name in exporters.TARGETS:
        exporter = exporters.load(name)
        for mode in exporter.modes:
            seen = set()
            for quant in exporter.quants:
                req = exporters.TargetRequest(Path(), {}, mode, quant, block_size, 1)
                scheme = exporter.recipe(req).scheme
                if scheme not in seen:
                    seen.add(scheme)
                    rows.append(Row(name, mode, quant))
    return rows


def select(rows: list[Row], patterns: str | None) -> list[Row]:
    """The rows matching any of the comma-separated ``target:mode:quant`` globs (``onnx:*:int8``)."""
    if not patterns:
        return rows
    globs = [p.strip() for p in patterns.split(",") if p.strip()]
    bad = [g for g in globs if g.count(":") != 2]
    if bad:
        raise MemloraError(f"--rows {bad[0]!r}: a row is target:mode:quant (globs allowed, e.g. onnx:*:int8)")
    chosen = [r for r in rows if any(fnmatch.fnmatchcase(r.key, g) for g in globs)]
    if not chosen:
        raise MemloraError(f"--rows {patterns}: matches no row (rows: {', '.join(r.key for r in rows)})")
    return chosen


def run_row(row: Row, model_dir: Path, adapters_dir: Path, work: Path, quick: bool, block_size: int,
            progress: Callable[[str], None]) -> dict:
    """Export one row's bundle, run parity on it, and return its result (the bundle is removed afterwards)."""
    from memlora.export.command import export_bundle
    from memlora.runtime.parity.run import run_parity
    from memlora.runtime.parity.thresholds import lookup

    bundle = work / row.key.replace(":", "-")
    started = time.perf_counter()
    export_bundle(model_dir, adapters_dir, [row.target], row.mode, row.quant, block_size, bundle,
                  stage=lambda s: progress(f"{row.key}: {s}"))
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    report = run_parity(bundle, model_dir, adapters_dir, [row.target], quick=quick,
                        progress=lambda s: progress(f"{row.key}: parity: {s}"))
    parity_s = time.perf_counter() - started
    t = report["targets"][row.target]
    shutil.rmtree(bundle)
    return {
        "row": row.key, "target": row.target, "mode": row.mode, "quant": row.quant, "scheme": t["precision"],
        "recipe": t["recipe"], "size_bytes": t["size_bytes"], "export_s": round(export_s, 1),
        "parity_s": round(parity_s, 1), "passed": t["passed"], "failures": t["failures"],
        "figures": {m: lookup(t, m)[1] for m in KEY_FIGURES},
        "decode_tok_s": t["speed"]["decode_tok_s"], "first_divergent_layer": t["first_divergent_layer"],
        "quick": quick, "memlora_version": __version__, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def read_results(path: Path) -> dict:
    if not path.exists():
        return {"schema": RESULTS_SCHEMA, "rows": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise MemloraError(f"{path}: cannot read matrix results ({e})") from e
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA or not isinstance(data.get("rows"), dict):
        raise MemloraError(f"{path}: not a matrix results file (expected schema {RESULTS_SCHEMA!r})")
    return data


def write_atomic(path: Path, text: str) -> None:
    """Write aside and rename: an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(results: dict, order: list[Row], command: str) -> str:
    """The matrix table, rows in `order`, from the results file."""
    rows = [results["rows"][r.key] for r in order if r.key in results["rows"]]
    missing = [r.key for r in order if r.key not in results["rows"]]
    machine = results.get("machine", {})
    lines = [
        "# Release matrix",
        "",
        f"Generated by `{command}` (raw results: `matrix.json`); do not edit by hand. Every row is the default "
        "model (SmolLM2-135M-Instruct) with the shipped adapters, exported with `memlora export --target T --mode M "
        "--quant Q`, then judged by `memlora parity` against the transformers+peft fp32 reference with the shipped "
        "thresholds (`runtime_py/parity/thresholds.json`). Rerun one row with `--rows target:mode:quant`.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; memlora {results.get('memlora_version', '?')}.",
        "Decode tok/s: parity's teacher-forced decode steps through the backend (one token per call), not a "
        "tuned benchmark; see `docs/benchmarks.md` for those. Size: the target's files in the bundle.",
        "",
        "| target | mode | quant | verdict | size MB | export s | top-1 | greedy exact | max abs | task equal | "
        "answer F1 | conversion KL | decode tok/s | failures |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        f = r["figures"]
        verdict = "pass" if r["passed"] else "**FAIL**"
        failures = "; ".join(r["failures"]) + (f" (first divergent: {r['first_divergent_layer']})"
                                               if r["first_divergent_layer"] else "")
        lines.append(
            f"| {r['target']} | {r['mode']} | {r['quant']} | {verdict} | {r['size_bytes'] / 1e6:.1f} | {r['export_s']:.0f} "
            f"| {_fmt(f['token.top1_agreement'], '.3f')} | {_fmt(f['token.greedy_exact_rate'], '.2f')} "
            f"| {_fmt(f['tensor.max_abs'], '.3g')} | {_fmt(f['task.equal_rate'], '.2f')} "
            f"| {_fmt(f['task.answer_f1'], '.2f')} | {_fmt(f['gap.conversion.kl'], '.2e')} "
            f"| {_fmt(r['decode_tok_s'], '.1f')} | {failures or '—'} |")
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def main(
    model: Model = None,
    adapters: Adapters = None,
    rows: Annotated[Optional[str], typer.Option("--rows", help="comma-separated target:mode:quant globs [default: every row]")] = None,
    results: Annotated[Path, typer.Option("--results", help="JSON results file (rows accumulate across runs)")] = Path("docs/matrix.json"),
    doc: Annotated[Path, typer.Option("--doc", help="Markdown table to write")] = Path("docs/matrix.md"),
    work: Annotated[Optional[Path], typer.Option("--work", help="where the row bundles are built [default: a temporary directory]")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="parity's smaller golden set and shorter conversation")] = False,
    block_size: Annotated[int, typer.Option("--block-size", help="int4 block size")] = 32,
    list_rows: Annotated[bool, typer.Option("--list", help="print the rows and exit")] = False,
) -> None:
    """Export every target x mode x precision, run parity on each, write docs/matrix.md; exit 1 if a row fails."""
    import sys
    import tempfile

    from memlora.paths import default_model_dir
    from memlora.session import default_adapters

    order = all_rows(block_size)
    chosen = select(order, rows)
    if list_rows:
        typer.echo("\n".join(r.key for r in chosen))
        return
    model_dir = Path(model) if model else default_model_dir()
    adapters_dir = Path(adapters) if adapters else default_adapters()
    if adapters_dir is None:
        raise MemloraError("no adapters: pass --adapters DIR")
    data = read_results(results)
    data.update(memlora_version=__version__, machine=machine())
    command = "memlora matrix" + (" --quick" if quick else "")
    if work is not None:
        try:
            Path(work).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MemloraError(f"--work {work}: cannot create the directory ({e.strerror})") from e
    with tempfile.TemporaryDirectory(prefix="memlora-matrix-", dir=work) as tmp:
        for row in chosen:
            typer.echo(f"{row.key}: export and parity", err=True)
            result = run_row(row, model_dir, adapters_dir, Path(tmp), quick, block_size,
                             lambda s: typer.echo(f"  {s}", err=True))
            previous = data["rows"].get(row.key)
            if previous is not None and previous["passed"] != result["passed"]:
                typer.echo(f"{row.key}: verdict changed from {'pass' if previous['passed'] else 'FAIL'} to "
                           f"{'pass' if result['passed'] else 'FAIL'}", err=True)
            data["rows"][row.key] = result
            write_atomic(results, json.dumps(data, indent=1) + "\n")
            write_atomic(doc, markdown(data, order, command))
            typer.echo(f"{row.key}: {'pass' if result['passed'] else 'FAIL'} "
                       f"({result['export_s']:.0f} s export, {result['parity_s']:.0f} s parity)")
    sys.exit(0 if all(data["rows"][r.key]["passed"] for r in chosen) else 1)
