"""`memlora eval convs`: what a user sees on conversations like the demo's.

Each conversation (a JSONL of turns, or a LoCoMo JSON, with `NAME.truth.json` beside it) is ingested into a
store of its own, its questions are asked, and answers and memories are judged against its truth
(`memlora.quality`): answers right, memories naming the right person, duplicates, malformed replies. By default
the held-out conversations in memlora/data/heldout/ and the demo conversation; none of them is trained on
(`memlora distill`'s synthetic conversations draw from disjoint pools). Stores live in a work directory, so a
rerun resumes the ingest where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from . import options
from .errors import MemloraError
from .evaluation import Threads, write_report
from .truth import DEMO_CONVERSATION, HELDOUT, SUFFIX, load_truth, truth_path


def conversations_in(folder: Path) -> list[Path]:
    """The conversation files of `folder` (*.jsonl, *.json but truth files), each with its truth beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MemloraError(f"{folder}: no such folder of conversations")
    found = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".json") and not p.name.endswith(SUFFIX))
    if not found:
        raise MemloraError(f"{folder}: no conversations (*.jsonl or LoCoMo *.json) here")
    missing = [str(truth_path(p)) for p in found if not truth_path(p).is_file()]
    if missing:
        raise MemloraError(f"{missing[0]}: missing (every conversation needs its expected truth beside it)")
    return found


def _name(path: Path) -> str:
    return path.name.rsplit(".", 1)[0]


def evaluate(pipeline, files: list[Path], work: Path, progress: bool = True) -> dict:
    """Ingest, ask and judge each conversation; the report holds every verdict and the summaries."""
    from .conversations import load_conversation
    from .ingest import ingest, plan
    from .quality import score, summary
    from .store import MemoryStore

    work.mkdir(parents=True, exist_ok=True)
    todo = [(p, load_conversation(p), load_truth(truth_path(p))) for p in files]  # bad input fails first
    scores = []
    for path, conv, truth in todo:
        name = _name(path)
        pipeline.store = MemoryStore(work / f"{name}.sqlite")
        ingest(pipeline, plan(conv), f"ingest {name}", progress)
        answers = [pipeline.answer(q.question).text for q in truth.questions]
        scores.append(score(name, truth, answers, pipeline.store.memories(), pipeline.store.exchanges()))
    return {
        "conversations": {s.name: {"summary": summary([s]), "answers": [asdict(a) for a in s.answers],
                                   "memories": [{"id": m.id, "text": m.text, "verdict": m.verdict,
                                                 "person": m.expected.person if m.expected else None,
                                                 "duplicate": m.duplicate} for m in s.memories]}
                          for s in scores},
        "total": summary(scores),
    }


def main(
    data: Annotated[Path, typer.Option("--data", help="folder of conversations, each with NAME.truth.json beside it",
                                       show_default="the packaged held-out conversations")] = HELDOUT,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="also the demo conversation")] = True,
    json_out: Annotated[Path, typer.Option("--json", help="write the report here")] = Path("convs_eval.json"),
    work: Annotated[Optional[Path], typer.Option("--work", help="stores for resuming [default: <json>.work/]")] = None,
    threads: Threads = None,
    backend: options.BackendName = None,
    bundle: options.Bundle = None,
    model: options.Model = None,
    adapters: options.Adapters = None,
    no_adapters: options.NoAdapters = False,
) -> None:
    """Ingest conversations like the demo's, ask their questions, judge answers and memories against their truth."""
    from memlora.runtime.registry import open_pipeline

    from .quality import line

    files = conversations_in(data) + ([DEMO_CONVERSATION] if demo else [])
    work = work or json_out.with_name(json_out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    pipeline = open_pipeline(work / f"{_name(files[0])}.sqlite", backend, bundle, model, adapters, no_adapters,
                             threads=threads)
    report = evaluate(pipeline, files, work)
    write_report(report, pipeline, no_adapters, json_out)
    console = Console()
    for name, c in report["conversations"].items():
        console.print(line(name, c["summary"]), markup=False, soft_wrap=True)
    console.print(line("all", report["total"]), markup=False, soft_wrap=True)
    console.print(f"report in {json_out}")
