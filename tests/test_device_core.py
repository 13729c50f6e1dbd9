"""The on-device core (device_core/, C++) through its host runner, against the Python side on the same bundle:
sha256 equal to hashlib, the bundle checks and their one-line errors equal to export/bundle.py's, tokenizer ids
and texts equal to the `tokenizers` library's."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memlora.bundle_tokenizer import BundleTokenizer
from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST, SCHEMA_VERSION, checksums, load_bundle

ROOT = Path(__file__).resolve().parents[1]

CORPUS = [
    "", " ", "   ", "\n", "\n\n\n", "\t", "\t\tindented\twith tabs", "trailing spaces   ", "   leading", "a  b   c    d",
    "line one\nline two\r\nline three\n", "Caroline went to a support group on 7 May 2023.",
    "I'm sure they'll say it's fine; DON'T you think we've, you'd, I'd?", "x's 'quoted' ''",
    '{"facts": ["Caroline likes painting", "Melanie has 3 kids"]}',
    '{"memory": [{"id": "0", "text": "x", "event": "ADD", "old_memory": ""}]}',
    "0123456789 3.14159 1,000,000 -42 +7 1e-5 2023-05-08 12:30", "٣٤٥ ½ ² Ⅻ",
    "emoji 😀🎸☕ 👩‍👩‍👧 🇫🇷 ❤️ 👍🏽", "日本語のテキスト、中文文本。한국어", "Ünïcödé café naïve façade", "e\u0301 combining",
    "Привет мир", "مرحبا بالعالم", "नमस्ते दुनिया", "∑ ∫ √ ≤ ≥ ≠ → ← ∞", "nbsp\u00a0here nel\u0085here ideo\u3000space",
    "line\u2028separator and\u2029paragraph", "zero\u200bwidth", "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_end|><|im_start|><|endoftext|>", "text<|im_end|>text", "<|im_st partial <|im_end", "<<|im_end|>>",
    "symbols !@#$%^&*()_+-=[]{}|;:,.<>/?`~", "    code:\n        return x  # comment\n",
]


def run(core: Path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(core), *map(str, args)], input=stdin, capture_output=True, text=True)


def core_error(core: Path, *args) -> str:
    """The one error line of a failing run (exit code 2, nothing else on stderr)."""
    result = run(core, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


def python_error(bundle: Path) -> str:
    with pytest.raises(MemloraError) as e:
        load_bundle(bundle)
    return str(e.value)


def test_sha256_equals_hashlib(core, tmp_path):
    """Lengths around the 64-byte block and the 56-byte padding edge, and a file longer than a 1 MiB read."""
    rng = random.Random(0)
    files = []
    for size in (0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, (1 << 20) + 7):
        f = tmp_path / f"f{size}"
        f.write_bytes(bytes(rng.randrange(256) for _ in range(size)) if size < 5000 else os.urandom(size))
        files.append(f)
    result = run(core, "sha256", *files)
    assert result.returncode == 0, result.stderr
    got = [line.split("  ", 1) for line in result.stdout.splitlines()]
    assert got == [[hashlib.sha256(f.read_bytes()).hexdigest(), str(f)] for f in files]


def test_verify_accepts_the_bundle(core, et_bundle):
    result = run(core, "verify", "--bundle", et_bundle)
    files = json.loads((et_bundle / MANIFEST).read_text())["files"]
    assert result.returncode == 0 and result.stdout == f"{et_bundle}: ok ({len(files)} files checked)\n"
    assert json.loads(run(core, "version").stdout)["bundle_schema"] == SCHEMA_VERSION


def test_bundle_problems_are_the_python_side_errors(core, et_bundle, tmp_path):
    """A tampered, a missing and an unlisted file, two old and a future schema version: one line naming the
    file, word for word what export/bundle.py says."""
    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())

    def same(expected_file: str) -> None:
        message = core_error(core, "verify", "--bundle", bundle)
        assert message == python_error(bundle) and message.startswith(f"{bundle / expected_file}: ")

    golden = bundle / "golden" / "traces.jsonl"
    original = golden.read_bytes()
    golden.write_bytes(original[:-2] + b"0\n")
    same("golden/traces.jsonl")
    golden.write_bytes(original)
    (bundle / "executorch" / "stray.bin").write_bytes(b"x")
    same("executorch/stray.bin")
    (bundle / "executorch" / "stray.bin").unlink()
    shutil.move(bundle / "tokenizer" / "tokenizer.json", tmp_path / "tokenizer.json")
    same("tokenizer/tokenizer.json")
    shutil.move(tmp_path / "tokenizer.json", bundle / "tokenizer" / "tokenizer.json")
    for version in ("memlora-bundle/1", "memlora-bundle/2", "memlora-bundle/4"):
        (bundle / MANIFEST).write_text(json.dumps({**manifest, "schema_version": version}))
        same(MANIFEST)
    assert "memlora-bundle/4" not in core_error(core, "verify", "--bundle", bundle).split(": ", 1)[0]
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    assert run(core, "verify", "--bundle", bundle).returncode == 0


def encode_decode(core: Path, source: list[str], texts: list[str]) -> tuple[list[list[int]], dict[bool, list[str]]]:
    """The core's ids of `texts`, and its decoding of those ids (and of every prefix of them) per skip flag."""
    out = run(core, "tokenize", *source, stdin="".join(json.dumps(t) + "\n" for t in texts))
    assert out.returncode == 0, out.stderr
    ids = [json.loads(line) for line in out.stdout.split("\n")[:-1]]
    prefixes = [i[:k] for i in ids for k in range(len(i) + 1)]
    decoded = {}
    for skip in (False, True):
        out = run(core, "detokenize", *source, *(["--skip-special"] if skip else []),
                  stdin="".join(json.dumps(p) + "\n" for p in prefixes))
        assert out.returncode == 0, out.stderr
        decoded[skip] = [json.loads(line) for line in out.stdout.split("\n")[:-1]]
    return ids, decoded


def assert_tokenizer_matches(core: Path, source: list[str], tokenizer_dir: Path, extra: list[str]) -> int:
    """Ids of the corpus (and of `extra` texts) and the decoding of every id prefix -- cut UTF-8 included --
    equal the `tokenizers` library's; returns how many ids were compared."""
    ref = BundleTokenizer(tokenizer_dir)
    texts = CORPUS + extra
    ids, decoded = encode_decode(core, source, texts)
    assert ids == [ref.encode(t, add_special_tokens=False) for t in texts]
    prefixes = [i[:k] for i in ids for k in range(len(i) + 1)]
    for skip in (False, True):
        assert decoded[skip] == [ref.decode(p, skip_special_tokens=skip) for p in prefixes]
    return sum(map(len, ids))


def rendered_prompts(tokenizer_dir: Path) -> list[str]:
    """Every pipeline prompt as the chat template renders it (what the core will tokenize on a phone)."""
    from tests.test_bundle_tokenizer import pipeline_prompts

    tok = BundleTokenizer(tokenizer_dir)
    return [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in pipeline_prompts()]


def test_tokenizer_ids_equal_tokenizers_on_the_bundle(core, et_bundle):
    tok_dir = et_bundle / "tokenizer"
    compared = assert_tokenizer_matches(core, ["--bundle", et_bundle], tok_dir, rendered_prompts(tok_dir))
    assert compared > 2500


@pytest.mark.real
def test_tokenizer_ids_equal_tokenizers_on_the_default_model(core):
    """SmolLM2-135M's own tokenizer.json (49152 tokens, 48900 merges)."""
    from memlora.paths import default_model_dir

    tok_dir = default_model_dir()
    assert assert_tokenizer_matches(core, ["--tokenizer", tok_dir / "tokenizer.json"], tok_dir,
                                    rendered_prompts(tok_dir)) > 1500


def test_unsupported_tokenizer_is_one_line_naming_the_file(core, et_bundle, tmp_path):
    doc = json.loads((et_bundle / "tokenizer" / "tokenizer.json").read_text())
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({**doc, "normalizer": {"type": "NFC"}}))
    assert core_error(core, "tokenize", "--tokenizer", bad).startswith(f"{bad}: not a tokenizer the core reads at normalizer: ")


def resign(bundle: Path) -> None:
    """Re-sign a modified bundle, so the change reaches the runtime instead of failing the checksum."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = checksums(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def selftest(core: Path, bundle: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "selftest.json"
    result = run(core, "selftest", "--bundle", bundle, "--json", report)
    assert result.stderr == "", result.stderr
    return result, json.loads(report.read_text())


def test_selftest_replays_the_golden_traces_identically(core, et_bundle, tmp_path):
    """The golden prompts' ids in, on ExecuTorch's C++ runtime under each record's output constraint: the
    reference's output ids, stop reasons and texts out, and its top-k logits to the trace's 5 decimals."""
    result, report = selftest(core, et_bundle, tmp_path)
    golden = [json.loads(line) for line in (et_bundle / "golden" / "traces.jsonl").read_text().splitlines()]
    assert {g["op"]: g["constraint"].split("/")[0] for g in golden} == {op: op for op in ("extract", "mem_update", "answer")}
    assert result.returncode == 0 and report["passed"], result.stdout
    assert [(r["op"], r["tokens"], r["stop"]) for r in report["records"]] == \
        [(g["op"], len(g["output_ids"]), g["stop_reason"]) for g in golden]
    assert all(r["passed"] and r["first_divergence"] is None and r["text_equal"] for r in report["records"])
    assert all(r["topk_steps_compared"] == len(g["topk"]) for r, g in zip(report["records"], golden))
    assert max(r["topk_max_abs"] for r in report["records"]) <= 2e-5
    assert f"selftest: {len(golden)} of {len(golden)} golden records identical" in result.stdout


def test_selftest_reports_a_mismatch_and_exits_nonzero(core, et_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    golden = bundle / "golden" / "traces.jsonl"
    records = [json.loads(line) for line in golden.read_text().splitlines()]
    records[2]["output_ids"][3] += 1  # the reference "chose" another token at position 3 of record 3
    golden.write_text("".join(json.dumps(r) + "\n" for r in records))
    resign(bundle)
    result, report = selftest(core, bundle, tmp_path)
    assert result.returncode == 1 and not report["passed"]
    assert [r["line"] for r in report["records"] if not r["passed"]] == [3]
    assert report["records"][2]["first_divergence"] == 3
    assert f"{golden}:3 mem_update: MISMATCH" in result.stdout


def test_a_broken_program_is_one_line_naming_it(core, et_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    program = bundle / "executorch" / "model.pte"
    program.write_bytes(program.read_bytes()[: program.stat().st_size // 2])
    resign(bundle)
    assert core_error(core, "selftest", "--bundle", bundle).startswith(f"{program}")


def test_device_traces_of_the_core_pass_parity_and_a_tampered_one_fails(core, et_bundle, tiny_model, taught_adapters,
                                                                        tmp_path):
    """`memlora-core generate` on every golden prompt writes the records `memlora parity --trace` replays on the
    fp32 reference: every step agrees. A copy of the first record whose device chose another token at step 1
    (labelled as another device, so one parity run judges both) fails there."""
    from typer.testing import CliRunner

    from memlora.cli import app

    golden = [json.loads(line) for line in (et_bundle / "golden" / "traces.jsonl").read_text().splitlines()]
    budget = json.loads((et_bundle / MANIFEST).read_text())["golden"]["max_new_tokens"]
    trace = tmp_path / "device.jsonl"
    for g in golden:
        shown = g["constraint"].split("/")[1] if g["op"] == "mem_update" else 0
        result = run(core, "generate", "--bundle", et_bundle, "--op", g["op"], "--max-new-tokens", budget, "--shown", shown,
                     "--prompt-ids", ",".join(map(str, g["prompt_ids"])), "--trace", trace)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert json.loads(result.stdout)["output_ids"] == g["output_ids"]
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(r["backend"], r["op"], r["output_ids"], r["text"], r["constraint"]) for r in records] == \
        [("executorch", g["op"], g["output_ids"], g["text"], g["constraint"]) for g in golden]
    tampered = json.loads(json.dumps(records[0]))
    tampered["backend"] = "tampered"
    tampered["topk"][1]["ids"][0] = (tampered["topk"][1]["ids"][0] + 1) % 100
    with trace.open("a") as f:
        f.write(json.dumps(tampered) + "\n")
    args = ["parity", "--bundle", str(et_bundle), "--targets", "", "--model", str(tiny_model), "--adapters",
            str(taught_adapters), "--trace", str(trace), "--quick", "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, args)
    reports = json.loads((tmp_path / "r.json").read_text())["traces"]
    assert result.exit_code == 1, result.output
    good, bad = reports["executorch"], reports["tampered"]
    assert good["passed"] and good["records"] == len(golden) and good["tensor"]["max_abs"] < 1e-4
    assert good["token"]["top1_agreement"] == 1.0 and good["token"]["greedy_exact_rate"] == 1.0
    assert not bad["passed"] and bad["token"]["first_divergence"] == {"position": 1, "line": len(golden) + 1}


PARSE_GOOD = {
    "extract": ['{"facts": ["Caroline likes painting", "Melanie has 3 kids"]}',
                'Sure! {"facts": ["  a  ", "", "a", "b\\u00e9", "\\ud83d\\ude00 emoji", "\\u3000wide\\u2028"]} trailing',
                '{"facts": []}', '{"facts": ["x"], "facts": ["y"]}', '{ "facts" : [ "tab\\tand\\nnewline" ] }'],
    "mem_update": ['{"memory": [{"id": "0", "text": "x", "event": "ADD", "old_memory": ""}]}',
                   '{"memory": [{"id": "0", "text": " new ", "event": "update", "old_memory": "old"},'
                   ' {"id": 1, "event": "NONE"}, {"id": "1", "event": "none", "text": 5.5e3}]}',
                   '{"memory": [{"id": "1", "event": "DELETE", "old_memory": 3}, {"event": "ADD", "text": "y"}]}',
                   '{"memory": []} {"memory": 1}'],
    "answer": ["", "   ", "7 May 2023", "  first line\nsecond\n", "\u3000a\u2028b", "x\r\ny", "a\x1cb", "\x85\u00a0lead",
               "one\u2029two", "tab\tin line\x0bvt"],
}
PARSE_BAD = {
    "extract": ["no json here", "{", '{"facts": "x"}', '{"facts": [1]}', '["facts"]', '{"facts": ["a",]}',
                '{"facts": ["a" "b"]}', '{"facts" ["a"]}', '{"facts": ["\\x"]}', '{"facts": ["\\u12g4"]}',
                '{"facts": ["\\ud800\\u12g4"]}', '{"facts": ["a\tb"]}', '{"facts": ["open', '{"facts": [nul]}',
                '{"facts": [-]}', '{"facts": [01]}', '{"facts": [1.]}', '{"facts": [1e]}', '{"a": NaN, "facts": 0}',
                '{"a": -Infinity, "b": Infinity, "facts": null}', '{"facts": [true, false]}', '{"facts": ["\\u12"',
                '{,}', '{"a":1,}', '{"a" : }', "{" + "[" * 3000, "{\"facts\": " + "[" * 100 + "]" * 100 + "}"],
    "mem_update": ['{"memory": {}}', '{"memory": [1]}', '{"memory": [{"event": "MERGE"}]}', '{"memory": [{}]}',
                   '{"memory": [{"event": ["add"]}]}', '{"memory": [{"event": {"k": [1.5, null, true, "q\'s"]}}]}',
                   '{"memory": [{"event": 1e16}]}', '{"memory": [{"event": -0.0001}]}', '{"memory": [{"event": 1e-05}]}',
                   '{"memory": [{"event": 123456789012345678901234567890}]}', '{"memory": [{"event": -0}]}',
                   '{"memory": [{"event": "ADD", "text": 1}]}', '{"memory": [{"event": "ADD", "text": "  "}]}',
                   '{"memory": [{"event": "UPDATE"}]}', '{"memory": [{"event": "DELETE", "id": "9"}]}',
                   '{"memory": [{"event": "DELETE", "id": 0.0}]}', '{"memory": [{"event": "NONE", "id": null}]}',
                   '{"memory": [{"event": "NONE", "id": [0, "1"]}]}', '{"memory": [{"event": "NONE", "id": "it\'s \\"q\\""}]}',
                   '{"memory": [{"event": "NONE", "id": "\\u00e9\\u00a0\\u200b\\u0007\\ud800\\udfff\\ud83d\\ude00\\u0085"}]}',
                   '{"memory": [{"event": "DELETE", "id": "0"}, {"event": "UPDATE", "id": "0", "text": "t"}]}',
                   '{"memory": [{"event": "NONE", "id": "0"}, {"event": "DELETE", "id": "0"}, {"event": "NONE", "id": "0"}]}',
                   '{"memory": [{"event": "DELETE", "id": "1"}, {"event": "DELETE", "id": "1"}]}',
                   '{"memory": [{"event": "\\u0131"}]}', '{"memory": [{"event": "ADD\\u0000"}]}'],
}


def parse_corpus(rng: random.Random) -> dict[str, list[str]]:
    """The good and bad outputs of each operation, and 300 random edits of them (characters deleted, repeated or
    replaced by JSON's own punctuation, digits, escapes and non-ASCII)."""
    alphabet = list('{}[]":,\\ \t\n0123456789.eE+-ntfuNIa') + ["\\u", "\\ud83d", "\u00e9", "\U0001F600", "\u2028"]
    corpus = {}
    for op in ("extract", "mem_update", "answer"):
        seeds = PARSE_GOOD[op] + PARSE_BAD.get(op, [])
        edits = []
        for _ in range(300):
            text = rng.choice(seeds)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(text) + 1)
                kind = rng.randrange(3)
                text = text[:i] + ("" if kind == 0 else rng.choice(alphabet)) + text[i + (kind != 1):]
            edits.append(text)
        corpus[op] = seeds + edits
    return corpus


def python_parse(op: str, text: str, known_ids: set[str]) -> dict:
    from memlora.parse import MalformedOutput, parse_answer, parse_facts, parse_update

    try:
        if op == "extract":
            return {"ok": parse_facts(text)}
        if op == "mem_update":
            return {"ok": [{"event": e.event, "id": e.id, "text": e.text, "old_memory": e.old_memory}
                           for e in parse_update(text, known_ids)]}
        return {"ok": parse_answer(text)}
    except MalformedOutput as e:
        return {"error": str(e)}


def test_parse_equals_memlora_parse(core):
    """Every output of the corpus, good, bad and randomly edited, parses to the same facts, events or answer on
    the core as in memlora/parse.py, or is rejected with the same reason word for word."""
    known = ["0", "1", "it's \"q\""]
    counts = {}
    for op, texts in parse_corpus(random.Random(0)).items():
        lines = "".join(json.dumps({"text": t, "known_ids": known}) + "\n" for t in texts)
        result = run(core, "parse", "--op", op, stdin=lines)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        got = [json.loads(line) for line in result.stdout.splitlines()]
        expected = [python_parse(op, t, set(known)) for t in texts]
        for text, g, e in zip(texts, got, expected):
            assert g == e, text
        assert len(got) == len(texts)
        counts[op] = sum("ok" in e for e in expected), sum("error" in e for e in expected)
    assert all(ok >= 5 and (op == "answer" or bad >= 25) for op, (ok, bad) in counts.items()), counts


def test_the_core_s_unicode_table_is_this_python_s():
    """repr() escapes what str.isprintable() rejects; the core's table of those code points is generated from
    this interpreter's Unicode database and must still be current."""
    sys.path.insert(0, str(ROOT / "device_core" / "tools"))
    try:
        import unicode_tables
    finally:
        sys.path.pop(0)
    assert unicode_tables.TABLE.read_text() == unicode_tables.render()


def store_calls(rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Two halves of an ingest's store calls: applied exchanges (ADD, UPDATE, DELETE, NONE), skipped ones (no
    facts, a malformed output kept), repeats of done exchanges, done checks, searches, dumps."""
    def unit() -> list[float]:
        v = [rng.gauss(0, 1) for _ in range(8)]
        n = sum(x * x for x in v) ** 0.5
        return [float(np.float32(x / n)) for x in v]

    def add(text):
        return {"event": "ADD", "memory_id": None, "text": text, "embedding": unit()}

    first = [
        {"call": "apply", "key": "s1:0", "turn_ids": ["D1:1", "D1:2"], "date": "8 May 2023",
         "facts": ["a", "b é", "c"], "changes": [add("Caroline likes painting"), add("b é 😀"), add("c")]},
        {"call": "skip", "key": "s1:1", "turn_ids": ["D1:3"], "status": "no_facts", "facts": []},
        {"call": "apply", "key": "s1:0", "turn_ids": ["D1:1"], "date": "x", "facts": [], "changes": [add("again")]},
        {"call": "done", "key": "s1:0"}, {"call": "done", "key": "s1:9"},
        {"call": "search", "query": unit(), "k": 2}, {"call": "dump"},
    ]
    second = [
        {"call": "apply", "key": "s2:0", "turn_ids": ["D2:1"], "date": "9 May 2023", "facts": ["u", "d"],
         "changes": [{"event": "UPDATE", "memory_id": "m0", "text": "Caroline paints", "embedding": unit()},
                     {"event": "DELETE", "memory_id": "m1", "text": ""},
                     {"event": "NONE", "memory_id": "m2", "text": "c"}, add("d"), add("e\nf")]},
        {"call": "skip", "key": "s2:1", "turn_ids": ["D2:2", "D2:3"], "status": "malformed", "facts": ["x"],
         "failed_op": "mem_update", "raw_output": '{"memory": [{"id": "7"', "error": "invalid JSON"},
        {"call": "skip", "key": "s1:1", "turn_ids": ["D1:3"], "status": "no_facts"},
        {"call": "skip", "key": "s2:2", "turn_ids": [], "status": "too_long"},
        {"call": "search", "query": unit(), "k": 10}, {"call": "search", "query": unit(), "k": 0}, {"call": "dump"},
    ]
    return first, second


def python_store_call(store, call: dict):
    from memlora.store import Change

    if call["call"] == "dump":
        return {"memories": [{"id": m.id, "text": m.text, "date": m.date} for m in store.memories()],
                "history": [{"seq": h.seq, "memory_id": h.memory_id, "event": h.event, "old_text": h.old_text,
                             "new_text": h.new_text, "date": h.date, "turn_ids": json.dumps(h.turn_ids),
                             "exchange": h.exchange} for h in store.history()],
                "exchanges": store.exchanges()}
    if call["call"] == "search":
        return [{"id": m.id, "text": m.text, "date": m.date, "score": m.score}
                for m in store.search(np.array(call["query"], np.float32), call["k"])]
    if call["call"] == "done":
        return store.is_done(call["key"])
    if call["call"] == "skip":
        return store.record_skipped(call["key"], call["turn_ids"], call["status"], call.get("facts"),
                                    call.get("failed_op"), call.get("raw_output"), call.get("error"))
    changes = [Change(c["event"], c["memory_id"], c["text"],
                      np.array(c["embedding"], np.float32) if "embedding" in c else None) for c in call["changes"]]
    return store.apply(call["key"], call["turn_ids"], call["date"], call["facts"], changes)


def core_store(core: Path, path: Path, calls: list[dict], *flags) -> list:
    result = run(core, "store", "--store", path, *flags, stdin="".join(json.dumps(c) + "\n" for c in calls))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def python_store(path: Path, calls: list[dict], read_only: bool = False) -> list:
    from memlora.store import MemoryStore

    store = MemoryStore(path, read_only=read_only)
    try:
        return [python_store_call(store, c) for c in calls]
    finally:
        store.close()


def assert_same_results(got: list, expected: list) -> None:
    """Equal, but search scores within float32 rounding (numpy's BLAS sums in another order than the core)."""
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, list) and e and isinstance(e[0], dict) and "score" in e[0]:
            assert [{**m, "score": 0} for m in g] == [{**m, "score": 0} for m in e]
            assert max(abs(a["score"] - b["score"]) for a, b in zip(g, e)) < 1e-6
        else:
            assert g == e


def sqlite_rows(path: Path) -> dict:
    """Everything in the file but the wall-clock `at` columns: schema, meta, memories with their embedding bytes."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return {"schema": db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
                "meta": db.execute("SELECT * FROM meta ORDER BY key").fetchall(),
                "memories": db.execute("SELECT * FROM memories ORDER BY id").fetchall(),
                "history": db.execute("SELECT seq,memory_id,event,old_text,new_text,date,turn_ids,exchange "
                                      "FROM history ORDER BY seq").fetchall(),
                "exchanges": db.execute("SELECT key,status,turn_ids,facts,failed_op,raw_output,error FROM exchanges "
                                        "ORDER BY key").fetchall(),
                "journal": db.execute("PRAGMA journal_mode").fetchone()}
    finally:
        db.close()


def test_store_is_memlora_store_and_each_opens_the_other_s(core, tmp_path):
    """The same calls give the same results on the core's store as on memlora/store.py's; a store the core began
    is continued by Python and the reverse, and both files end with the same rows, bytes of every embedding
    included; each side reads the other's file read-only to the same dump."""
    first, second = store_calls(random.Random(0))
    by_core, by_python = tmp_path / "core" / "store.sqlite", tmp_path / "python" / "store.sqlite"
    expected_first = python_store(by_python, first)
    assert_same_results(core_store(core, by_core, first), expected_first)
    assert_same_results(python_store(by_core, second), core_store(core, by_python, second))
    assert sqlite_rows(by_core) == sqlite_rows(by_python)
    dump = [{"call": "dump"}, {"call": "search", "query": first[5]["query"], "k": 3}]
    assert_same_results(core_store(core, by_python, dump, "--read-only"), python_store(by_core, dump, read_only=True))
    assert expected_first[2] is None and expected_first[3:5] == [True, False]


def test_store_refusals_are_the_python_side_errors(core, tmp_path):
    import sqlite3

    from memlora.store import MemoryStore

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).executescript("CREATE TABLE t (x);")
    newer = tmp_path / "newer.sqlite"
    python_store(newer, [])
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    db.commit()
    db.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    not_db = tmp_path / "notdb.sqlite"
    not_db.write_bytes(b"x" * 4096)
    for path, read_only in ((other, False), (newer, False), (empty, True), (tmp_path / "missing.sqlite", True),
                            (not_db, False)):
        with pytest.raises(MemloraError) as e:
            MemoryStore(path, read_only=read_only)
        assert core_error(core, "store", "--store", path, *(["--read-only"] if read_only else [])) == str(e.value)


def test_a_broken_constraint_file_is_the_python_side_error(core, et_bundle, tmp_path):
    """Tables whose bytes changed (the bundle re-signed, so the checksum passes) and a file that is not a
    constraint file: memlora/constrain.py's one-line message, before any program loads."""
    from memlora import constrain

    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    file = bundle / "constraints" / "automaton.bin"
    blob = file.read_bytes()
    for broken in (blob[:-1] + bytes([blob[-1] ^ 1]), b"NOTMAGIC" + blob[8:]):
        file.write_bytes(broken)
        resign(bundle)
        with pytest.raises(MemloraError) as e:
            constrain.load(file)
        assert core_error(core, "generate", "--bundle", bundle, "--op", "answer", "--prompt-ids", "1,2") == str(e.value)
