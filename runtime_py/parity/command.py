"""`memlora parity`: judge a bundle's targets against the references; exit 0 only when every target passes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from memlora.errors import MemloraError
from memlora.options import Adapters, Model

# parity has no --backend: the shared --bundle help ("non-torch backends") would describe another verb
Bundle = Annotated[Optional[Path], typer.Option("--bundle", help="the bundle to check (a directory written by `memlora export`; required)")]


def main(
    bundle: Bundle = None,
    targets: Annotated[Optional[str], typer.Option("--targets", help="comma-separated targets [default: every target in the bundle]")] = None,
    model: Model = None,
    adapters: Adapters = None,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="a device trace (JSONL, memlora/schemas/trace.schema.json) to check against the reference")] = None,
    thresholds: Annotated[Optional[Path], typer.Option("--thresholds", help="JSON thresholds merged over the defaults (per precision, per target)")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the JSON report here")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="write the self-contained HTML report here")] = None,
    junit_out: Annotated[Optional[Path], typer.Option("--junit", help="write JUnit XML here (one test case per target x level x gated metric)")] = None,
    summary_out: Annotated[Optional[Path], typer.Option("--summary", help="write a Markdown summary here (for a CI job summary or a PR comment)")] = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="an earlier parity JSON report of the same model: fail on regressions past the thresholds' allowances")] = None,
    bench: Annotated[Optional[Path], typer.Option("--bench", help="a `memlora bench --json` run on this bundle: its speeds replace the parity run's")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="replay the fp32 reference's outputs from MEMLORA_HOME/parity-cache (recorded on first use)")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="a smaller golden set and a shorter conversation")] = False,
) -> None:
    """Check every exported target at tensor, token, task and device-trace level; exit 1 if any fails."""
    from memlora.export.bundle import load_bundle
    from memlora.paths import default_model_dir
    from memlora.session import default_adapters

    from .baseline import apply_bench, compare, load_baseline, load_bench, same_model
    from .cache import default_root
    from .html import write_html
    from .junit import write_junit
    from .report import table, write_json
    from .run import run_parity
    from .summary import write_summary
    from .thresholds import load_thresholds

    if bundle is None:
        raise MemloraError("pass --bundle DIR (a bundle written by `memlora export`)")
    model_dir = Path(model) if model else default_model_dir()
    adapters_dir = adapters or default_adapters()
    if adapters_dir is None:
        raise MemloraError("no adapters: pass --adapters DIR (the adapters the bundle was exported from)")
    names = None if targets is None else [t.strip() for t in targets.split(",") if t.strip()]
    limits = load_thresholds(thresholds)
    # a bad baseline or bench file is refused before any model loads
    old = None if baseline is None else load_baseline(baseline)
    if old is not None:
        same_model(old, load_bundle(Path(bundle), verify=False).manifest["model"], baseline)
    speeds = None if bench is None else load_bench(bench)
    report = run_parity(Path(bundle), model_dir, Path(adapters_dir), names, thresholds=limits,
                        trace=trace, quick=quick, progress=lambda msg: typer.echo(f"  {msg}", err=True),
                        cache=default_root() if cache else None)
    if speeds is not None:
        apply_bench(report, speeds, bench)
    if old is not None:
        compare(report, old, baseline, limits.allowances)
    if json_out:
        write_json(report, json_out)
    if html_out:
        write_html(report, html_out)
    if junit_out:
        write_junit(report, limits, junit_out)
    if summary_out:
        write_summary(report, summary_out)
    typer.echo(table(report))
    sys.exit(0 if report["passed"] else 1)
