"""JUnit XML of a parity report, so a CI system shows each gate as a test: one <testcase> per target (or
traced device) x level x limited metric, plus one per failure that no limit names (a level that checked
nothing, a regression against a baseline).

The verdicts are the report's own: a gate fails exactly when its line is among the entry's ``failures``
(`thresholds.check` writes both), and a gate whose level was not asked for is <skipped>, as the report
does not check it either.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .report import write_atomic
from .thresholds import METRICS, TRACE_METRICS, Thresholds, check, lookup


def _case(suite: ET.Element, classname: str, name: str, failures: list[str], skipped: str | None = None) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failures:
        ET.SubElement(case, "failure", message=failures[0], type="parity").text = "\n".join(failures)
    elif skipped:
        ET.SubElement(case, "skipped", message=skipped)


def _entry_cases(suite: ET.Element, kind: str, name: str, entry: dict, limits: dict, measures: frozenset[str]) -> None:
    """The gates of one target (or traced device); then its failures no limit wrote, under their own level."""
    written = set()
    for metric, bound in sorted(limits.items()):
        if metric not in measures:
            continue
        level = metric.split(".")[0]
        failures = check(entry, {metric: bound}, measures)
        written.update(failures)
        asked, _ = lookup(entry, metric)
        _case(suite, f"{kind}.{name}.{level}", metric, failures, None if asked else f"the {level} level was not run")
    baseline = entry.get("baseline") or {}
    if "skipped" in baseline:
        _case(suite, f"{kind}.{name}.baseline", "baseline", [], baseline["skipped"])
    for item, result in sorted(baseline.get("metrics", {}).items()):
        failures = [result["failure"]] if "failure" in result else []
        written.update(failures)
        _case(suite, f"{kind}.{name}.baseline", item, failures, result.get("skipped"))
    for failure in entry["failures"]:
        if failure not in written:
            level = failure.split(":", 1)[0]
            _case(suite, f"{kind}.{name}.{level}", "checked", [failure])


def render(report: dict, thresholds: Thresholds) -> str:
    """The report as one <testsuites> document with a <testsuite> per target and per traced device."""
    root = ET.Element("testsuites", name="memlora parity")
    groups = [("parity", n, e, METRICS) for n, e in report["targets"].items()]
    groups += [("parity.trace", n, e, TRACE_METRICS) for n, e in report["traces"].items()]
    for kind, name, entry, measures in groups:
        suite = ET.SubElement(root, "testsuite", name=f"{kind}.{name}")
        _entry_cases(suite, kind, name, entry, thresholds.limits(name, entry["precision"]), measures)
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
        suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
        suite.set("errors", "0")
    for key in ("tests", "failures", "skipped", "errors"):
        root.set(key, str(sum(int(s.get(key)) for s in root)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: dict, thresholds: Thresholds, path: Path) -> None:
    write_atomic(path, render(report, thresholds))
