"""`memlora eval locomo`: the memory pipeline on LoCoMo conversations, scored the way LoCoMo and Mem0 score it.

Each conversation is ingested session by session (windows of 4 turns, as `memlora ingest` does) into its
own store; questions of categories 1-4 whose evidence lies in the ingested sessions are then answered.
Reported: token F1 and BLEU-1 per category and overall, extraction F1 against the observations and the
speaker attribution of the matched facts, malformed replies per operation, update accuracy against the
rule-based update teacher, and an LLM-judge score (J) when a judge is configured.
Stores and answers live in a work directory, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import options
from .errors import MemloraError
from .evaluation import Threads, write_report

from .distill.teacher import HELD_OUT

DEFAULT_CONVERSATIONS = ",".join(HELD_OUT)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
FACT_MATCH_F1 = 0.5  # a predicted fact matches a gold observation at LoCoMo token F1 >= this
JUDGE_ENV = ("MEMLORA_JUDGE_URL", "MEMLORA_JUDGE_MODEL", "MEMLORA_JUDGE_KEY")
_SESSION = re.compile(r"D(\d+):")


def questions_in(conv, sessions: list[int]) -> list[dict]:
    """Category 1-4 questions whose evidence turns all lie in `sessions` (answerable from what was ingested)."""
    out = []
    for i, q in enumerate(conv.qa):
        found = [int(m) for m in _SESSION.findall(" ".join(map(str, q.get("evidence", []))))]
        if q.get("category") in CATEGORIES and "answer" in q and found and set(found) <= set(sessions):
            out.append({"index": i, **q})
    return out


def match_facts(predicted: list[str], gold: list[str]) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of predicted to gold facts by LoCoMo token F1, best first: (predicted, gold)
    index pairs."""
    from .metrics import token_f1

    pairs = sorted(((token_f1(p, g), i, j) for i, p in enumerate(predicted) for j, g in enumerate(gold)), reverse=True)
    used_p, used_g, out = set(), set(), []
    for score, i, j in pairs:
        if score < FACT_MATCH_F1:
            break
        if i not in used_p and j not in used_g:
            used_p.add(i), used_g.add(j)
            out.append((i, j))
    return out


def extraction_scores(store, conv, sessions: list[int]) -> dict:
    """Micro precision/recall/F1 of the facts the pipeline extracted per exchange vs the observations, and how
    many matched facts name the person the observation is annotated under (speaker attribution)."""
    from .conversations import exchanges
    from .distill.teacher import WINDOW, window_observations
    from .quality import names_in, names_right_person

    gold_by_key = {key: obs for (key, _), (_, obs) in
                   zip(exchanges(conv, [s.number for s in conv.sessions], WINDOW), window_observations(conv))}
    pred_n = gold_n = matched = right = 0
    keys = {k for k, _ in exchanges(conv, sessions, WINDOW)}
    for row in store.exchanges():
        if row["key"] not in keys:
            continue
        facts = json.loads(row["facts"] or "null") or []  # malformed extraction: no facts
        gold = gold_by_key.get(row["key"], [])
        pairs = match_facts(facts, [g for g, _ in gold])
        right += sum(names_right_person(facts[i], gold[j][1], names_in(gold[j][0], conv.speakers), conv.speakers)
                     for i, j in pairs)
        pred_n, gold_n, matched = pred_n + len(facts), gold_n + len(gold), matched + len(pairs)
    return {"predicted": pred_n, "gold": gold_n, "matched": matched, "right_person": right}


def _f1(counts: dict) -> dict:
    """Precision, recall, F1 and speaker attribution accuracy from summed counts."""
    p = counts["matched"] / counts["predicted"] if counts["predicted"] else 0.0
    r = counts["matched"] / counts["gold"] if counts["gold"] else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "attribution": counts["right_person"] / counts["matched"] if counts["matched"] else None, **counts}


def update_decisions(pipeline, example) -> dict:
    """Run the update operation on a teacher prompt; per-fact agreement (event and id) with the teacher."""
    from .parse import MalformedOutput, parse_update

    teacher = json.loads(example.target)["memory"]
    raw = pipeline.run("mem_update", example.messages).text
    try:
        events = parse_update(raw, {str(i) for i in range(example.n_shown)})
    except MalformedOutput:
        events = []
    correct = event_correct = 0
    for t, e in zip(teacher, events):
        event_correct += t["event"] == e.event
        correct += t["event"] == e.event and (t["event"] == "ADD" or t.get("id") == e.id)
    return {"facts": len(teacher), "correct": correct, "event_correct": event_correct, "parsed": bool(events) or not teacher}


def judge(question: str, gold: str, answer: str) -> float | None:
    """Mem0-style LLM judge on an OpenAI-compatible endpoint ($MEMLORA_JUDGE_URL, _MODEL, _KEY); None if unset."""
    url, model, key = (os.environ.get(k) for k in JUDGE_ENV)
    if not url or not model:
        return None
    prompt = (
        "Label the generated answer to a question about a conversation as CORRECT or WRONG against the gold "
        "answer. Be generous: it is CORRECT if it refers to the same thing or time as the gold answer, even "
        "if worded differently or longer.\n"
        f"Question: {question}\nGold answer: {gold}\nGenerated answer: {answer}\n"
        "Reply with one word: CORRECT or WRONG."
    )
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/chat/completions", body,
                                 {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = json.loads(resp.read())["choices"][0]["message"]["content"]
    except (OSError, ValueError, KeyError, IndexError) as e:
        raise MemloraError(f"LLM judge at {url}: request failed ({e})") from e
    return 1.0 if "CORRECT" in text.upper() and "WRONG" not in text.upper() else 0.0


def _jsonl(path: Path) -> dict[int, dict]:
    """Rows already written (resume), keyed by their index; a torn last line is ignored."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                obj = json.loads(line)
                rows[obj["index"]] = obj
            except (ValueError, KeyError):
                continue
    return rows


def _append(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def summarize(answers: list[dict], extraction: dict, updates: list[dict], malformed: dict) -> dict:
    """The report: overall and per-category F1/BLEU-1 (J when judged), extraction F1 and speaker attribution,
    malformed replies per operation, update accuracy."""

    def block(rows: list[dict]) -> dict:
        n = len(rows)
        out = {"f1": sum(r["f1"] for r in rows) / n if n else 0.0,
               "bleu1": sum(r["bleu1"] for r in rows) / n if n else 0.0, "n": n}
        judged = [r["j"] for r in rows if r.get("j") is not None]
        if judged:
            out["j"] = sum(judged) / len(judged)
        return out

    facts = sum(u["facts"] for u in updates)
    return {
        "overall": block(answers),
        "by_category": {str(c): {"name": name, **block([a for a in answers if a["category"] == c])}
                        for c, name in CATEGORIES.items()},
        "n_questions": len(answers),
        "extraction_f1": extraction["f1"],
        "speaker_attribution": extraction["attribution"],
        "extraction": extraction,
        "malformed": malformed,
        "update_accuracy": sum(u["correct"] for u in updates) / facts if facts else None,
        "update": {"examples": len(updates), "facts": facts,
                   "event_accuracy": sum(u["event_correct"] for u in updates) / facts if facts else None,
                   "parsed": sum(u["parsed"] for u in updates)},
    }


def evaluate(pipeline, data: Path, conversations: list[str], sessions: str | None, work: Path,
             update_examples: int = 20, progress: bool = True) -> dict:
    """Ingest, answer and score each conversation; everything done is kept in `work` for resuming."""
    from .conversations import exchanges, parse_range
    from .distill.teacher import WINDOW, load_conversations, update_examples as teacher_updates
    from .metrics import bleu1, gold_answer, locomo_f1
    from .quality import malformed
    from .store import MemoryStore

    work.mkdir(parents=True, exist_ok=True)
    convs = load_conversations(data, conversations)
    plan = []
    for conv in convs:
        chosen = parse_range(sessions, [s.number for s in conv.sessions])
        plan.append((conv, chosen, exchanges(conv, chosen, WINDOW), questions_in(conv, chosen)))
    all_answers, all_updates, extraction_rows, exchange_rows = [], [], [], []
    start = time.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not progress) as bar:
        for conv, chosen, todo, questions in plan:
            pipeline.store = MemoryStore(work / f"{conv.id}.sqlite")
            task = bar.add_task(f"{conv.id} ingest", total=len(todo))
            for key, turns in todo:
                pipeline.ingest(key, turns)
                bar.advance(task)
            extraction_rows.append(extraction_scores(pipeline.store, conv, chosen))
            keys = {k for k, _ in todo}
            exchange_rows += [r for r in pipeline.store.exchanges() if r["key"] in keys]
            done = _jsonl(work / f"{conv.id}.answers.jsonl")
            task = bar.add_task(f"{conv.id} answer", total=len(questions))
            for q in questions:
                if q["index"] not in done:
                    gold = gold_answer(q["answer"], q["category"])
                    text = pipeline.answer(str(q["question"])).text
                    row = {"index": q["index"], "category": q["category"], "question": q["question"], "gold": gold,
                           "answer": text, "f1": locomo_f1(text, q["answer"], q["category"]), "bleu1": bleu1(text, gold),
                           "j": judge(str(q["question"]), gold, text)}
                    _append(work / f"{conv.id}.answers.jsonl", row)
                    done[q["index"]] = row
                all_answers.append(done[q["index"]])
                bar.advance(task)
            examples = teacher_updates(conv, pipeline.embedder)[:update_examples]
            done = _jsonl(work / f"{conv.id}.updates.jsonl")
            task = bar.add_task(f"{conv.id} update", total=len(examples))
            for i, ex in enumerate(examples):
                if i not in done:
                    done[i] = {"index": i, **update_decisions(pipeline, ex)}
                    _append(work / f"{conv.id}.updates.jsonl", done[i])
                all_updates.append(done[i])
                bar.advance(task)
    extraction = _f1({k: sum(r[k] for r in extraction_rows) for k in ("predicted", "gold", "matched", "right_person")})
    report = summarize(all_answers, extraction, all_updates, malformed(exchange_rows))
    report.update(conversations=conversations, sessions=sessions or "all", seconds=round(time.time() - start, 1))
    return report


def main(
    data: Annotated[Optional[Path], typer.Option("--data", help="LoCoMo directory [default: $MEMLORA_LOCOMO]")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="write the report here")] = Path("locomo_eval.json"),
    conversations: Annotated[str, typer.Option("--conversations", help="comma-separated conversation ids")] = DEFAULT_CONVERSATIONS,
    sessions: Annotated[Optional[str], typer.Option("--sessions", help="sessions to ingest, e.g. 1-3 (questions are limited to them)")] = None,
    work: Annotated[Optional[Path], typer.Option("--work", help="stores and answers for resuming [default: <json>.work/]")] = None,
    update_examples: Annotated[int, typer.Option(min=0, help="teacher update prompts scored per conversation")] = 20,
    threads: Threads = None,
    backend: options.BackendName = None,
    bundle: options.Bundle = None,
    model: options.Model = None,
    adapters: options.Adapters = None,
    no_adapters: options.NoAdapters = False,
) -> None:
    """Evaluate the memory pipeline on LoCoMo conversations (token F1, BLEU-1, extraction F1, update accuracy)."""
    from .distill.teacher import locomo_dir
    from memlora.runtime.registry import open_pipeline

    work = work or json_out.with_name(json_out.name + ".work")
    ids = [c.strip() for c in conversations.split(",") if c.strip()]
    work.mkdir(parents=True, exist_ok=True)
    pipeline = open_pipeline(work / f"{ids[0]}.sqlite", backend, bundle, model, adapters, no_adapters, threads=threads)
    report = evaluate(pipeline, locomo_dir(data), ids, sessions, work, update_examples)
    write_report(report, pipeline, no_adapters, json_out)
    o = report["overall"]
    bad = report["malformed"]
    attribution = report["speaker_attribution"]
    Console().print(f"{report['n_questions']} questions: F1 {o['f1']:.3f}, BLEU-1 {o['bleu1']:.3f}; "
                    f"extraction F1 {report['extraction_f1']:.3f}, speaker attribution "
                    f"{'n/a' if attribution is None else f'{attribution:.3f}'}; malformed replies "
                    f"{bad['extract']['rate']:.1%} extract, {bad['mem_update']['rate']:.1%} update; "
                    f"update accuracy {report['update_accuracy']}; report in {json_out}")
