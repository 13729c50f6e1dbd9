"""The on-device core's conversation loading and ingest plan (device_core/src/conversation.*) through the host
runner's `plan`, against memlora.conversations and memlora.ingest.plan: the same exchanges (keys, turns, dates,
turn ids) from JSONL and LoCoMo files, and the same MemloraError message word for word on bad input."""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path

import pytest

from memlora.conversations import load_conversation
from memlora.errors import MemloraError
from memlora.ingest import plan
from tests import test_device_core as device_core

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "memlora" / "data"
SHIPPED = [DATA / "demo_conversation.jsonl", *sorted((DATA / "heldout").glob("*.jsonl"))]


def python_plan(path, sessions: str | None, window: int = 4) -> list[dict]:
    return [{"key": key, "turns": [dataclasses.asdict(t) for t in turns]}
            for key, turns in plan(load_conversation(path), sessions, window)]


def core_args(path, sessions: str | None, window: int = 4) -> list:
    return ["plan", path, "--window", window, *([] if sessions is None else ["--sessions", sessions])]


def core_plan(core, path, sessions: str | None, window: int = 4) -> list[dict]:
    result = device_core.run(core, *core_args(path, sessions, window))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def python_error(path, sessions: str | None = None) -> str:
    with pytest.raises(MemloraError) as e:
        python_plan(path, sessions)
    return str(e.value)


def turn(speaker, text, **extra) -> dict:
    return {"speaker": speaker, "text": text, **extra}


# Sessions out of order, an empty one without a date, a null one, blip captions (a falsy one is not appended),
# missing and non-string dia_ids, a missing text, dates Python's \d and \s read (Arabic-Indic digits, U+001C
# and U+00A0 as spaces), one without a date in it, a lone surrogate a JSON escape made.
CONVERSATION = {
    "speaker_a": "Caroline", "speaker_b": "Melanie",
    "session_10": [turn("Caroline", "Look at this!", dia_id="D10:1", blip_caption="a photo of a dog on a beach"),
                   turn("Melanie", "So cute 🐶", blip_caption=""), turn("Caroline", "He is \ud83d mine", dia_id=7),
                   turn("Melanie", "Lucky you", blip_caption={"kind": "photo", "n": 2}), turn("Caroline", "x", dia_id=None)],
    "session_10_date_time": "1:56 pm on 8 May, 2023",
    "session_2": [turn("Melanie", "Hi\nthere", dia_id="D2:1"), {"speaker": "Caroline"}, turn("Melanie", "tabs\tand \u2028")],
    "session_2_date_time": "\u0668\x1cJune\u00a0\u0662\u0660\u0662\u0663",
    "session_1": [turn("Caroline", "first", blip_caption=1.5), turn("Melanie", "second", dia_id=3.0)],
    "session_1_date_time": "  sometime in spring  ",
    "session_3": [],
    "session_4": None, "session_4_date_time": "  ",
    "session_5_date_time": "orphan date", "session_x": [1], "session_1_summary": "not a session",
}
OBSERVATIONS = {"session_10_observation": {"Caroline": [["Caroline has a dog", "D10:1"], "loose"]},
                "session_3_observation": "ignored: the session is empty"}
QA = [{"question": "What pet does Caroline have?", "answer": "a dog"}]


@pytest.fixture(scope="module")
def locomo_files(tmp_path_factory) -> list[Path]:
    """The conversation in the flat layout (no sample_id: the stem is its id) and in the official nested one."""
    d = tmp_path_factory.mktemp("locomo")
    flat, nested = d / "flat.conv.json", d / "locomo10.json"
    flat.write_text(json.dumps({**CONVERSATION, **OBSERVATIONS, "qa": QA}))
    text = json.dumps([{"sample_id": "conv-26", "conversation": CONVERSATION, "observation": OBSERVATIONS, "qa": QA}],
                      ensure_ascii=False, indent=1)
    nested.write_text(text.replace("\ud83d", "\\ud83d"), encoding="utf-8")  # the surrogate stays escaped
    return [flat, nested]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> Path:
    """Session keys in other scripts' digits (Arabic-Indic, a mathematical digit after four runs of ten) and with a
    leading zero: int() reads them, so each names session 1 or 2 again, which Python lists once more. The id is an
    integer of 4300 digits, the most int() reads."""
    f = tmp_path_factory.mktemp("digits") / "digits.json"
    f.write_text(json.dumps(locomo(session_2=[turn("B", "two")], session_2_date_time="9 May 2023",
                                   sample_id=int("9" * 4300), **{"session_\u0661": None, "session_\U0001d7d9": 5, "session_02": "x"})))
    return f


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory) -> Path:
    """CRLF, a form feed and a vertical tab ending lines (str.splitlines), blank and Unicode-space lines, a date
    that comes back (a new session), dates with text around them or none Python's regex finds."""
    lines = [json.dumps(turn("Ana", "Hi 👋", date="on 8 May, 2023 at noon")), "", "\u3000 \t",
             json.dumps(turn("Ben", "  spaced  ", date="8 May 2023")), json.dumps(turn("Ana", "a\u2028b", date="9 May 2023")),
             json.dumps(turn("Ben", "back", date=" 8  May   2023 ")), json.dumps(turn("Ana", "later", date="  no date here ")),
             json.dumps(turn("Ben", "U+180E is no space to Python", date="8\u180eMay 2023"))]
    f = tmp_path_factory.mktemp("jsonl") / "turns.v2.jsonl"
    f.write_bytes(("\r\n".join(lines[:3]) + "\x0c" + lines[3] + "\x0b" + "\n".join(lines[4:]) + "\n").encode())
    return f


def specs(numbers: list[int]) -> list[str | None]:
    return [None, str(numbers[-1]), f" {numbers[0]} - {numbers[1]} ", f"{numbers[-1]},0{numbers[0]}-{numbers[0]}"]


def test_plan_equals_python(core, locomo_files, jsonl_file, digits_file):
    for path in [*SHIPPED, jsonl_file, *locomo_files, digits_file]:
        numbers = [s.number for s in load_conversation(path).sessions]
        for sessions in specs(numbers):
            for window in (1, 3, 4, 100):
                assert core_plan(core, path, sessions, window) == python_plan(path, sessions, window), (path, sessions, window)


def test_the_files_cover_what_they_claim(locomo_files, jsonl_file):
    """The cases above are in the plan: captions, default dia_ids, Unicode dates, order, sessions from dates."""
    flat, nested = (python_plan(f, None, 100) for f in locomo_files)
    assert [x["key"] for x in nested] == ["conv-26:s1:D1:1", "conv-26:s2:D2:1", "conv-26:s10:D10:1"]
    assert [x["key"] for x in flat][0] == "flat.conv:s1:D1:1"
    texts = [t["text"] for t in nested[2]["turns"]]
    assert texts[0].endswith(" [shares a photo: a photo of a dog on a beach]") and texts[1] == "So cute 🐶"
    assert [t["turn_id"] for t in nested[2]["turns"]] == ["D10:1", "D10:2", "7", "D10:4", "None"]
    assert nested[1]["turns"][0]["date"] == "\u0668 June \u0662\u0660\u0662\u0663"
    assert nested[0]["turns"][0]["date"] == "sometime in spring"
    assert [(x["key"], x["turns"][0]["date"]) for x in python_plan(jsonl_file, None, 100)] == [
        ("turns.v2:s1:L1", "8 May 2023"), ("turns.v2:s2:L5", "9 May 2023"), ("turns.v2:s3:L6", "8 May 2023"),
        ("turns.v2:s4:L7", "no date here"), ("turns.v2:s5:L8", "8\u180eMay 2023")]


def locomo(**changes) -> dict:
    return {"speaker_a": "A", "speaker_b": "B", "session_1": [turn("A", "hi")], "session_1_date_time": "8 May 2023",
            **changes}


def line(**obj) -> str:
    return json.dumps(obj)


GOOD_LINE = line(speaker="A", text="hi", date="8 May 2023")

# (file name, content: bytes, or a JSON value to write)
BAD_FILES = [
    ("empty.json", b""), ("blank.json", b"  \n\t "), ("brace.json", b"{"), ("extra.json", b'{"a": 1} x'),
    ("bom.json", "\ufeff{}".encode()), ("unterminated.json", b'{\n  "speaker_a": "A\n'), ("escape.json", b'["\\q"]'),
    ("open.json", b'["abc'), ("deep.json", b"[" * 100000), ("deep-object.json", b'{"a": ' * 100000),
    ("bigint.json", b"[" + b"1" * 4301 + b", x]"), ("key.json", b'{"a" 1}'), ("comma.json", b'[1 2]'), ("name.json", b'{1: 2}'), ("nan-ok-then-bad.json", b'[NaN, tru]'),
    ("utf8.json", b'{"speaker_a": "\xff"}'), ("truncated.json", b'{"a": "\xe2\x82'), ("surrogate.json", b'"\xed\xa0\x80"'),
    ("overlong.json", b'  "\xc0\xaf"'),
    ("list0.json", []), ("list2.json", [locomo(), locomo()]), ("int.json", [5]), ("str.json", "text"), ("float.json", 3.5),
    ("null.json", None), ("bool.json", True),
    ("conv-list.json", {"conversation": [], "observation": {}}), ("obs-null.json", {"conversation": locomo(), "observation": None}),
    ("no-speakers.json", {"session_1": [turn("A", "hi")]}), ("empty-speaker.json", locomo(speaker_b="")),
    ("int-speaker.json", locomo(speaker_a=3)), ("no-sessions.json", {"speaker_a": "A", "speaker_b": "B"}),
    ("all-empty.json", locomo(session_1=[], session_2=None, session_3={}, session_3_date_time="x")),
    ("session-str.json", locomo(session_2="turns")), ("session-dict.json", locomo(session_2={"a": 1})),
    ("session-int.json", locomo(session_2=5)), ("session-true.json", locomo(session_1=True)),
    ("no-date.json", locomo(session_1_date_time=None)), ("missing-date.json", {**locomo(), "session_1_date_time": " \u3000"}),
    ("absent-date.json", {"speaker_a": "A", "speaker_b": "B", "session_1": [turn("A", "hi")]}),
    ("date-int-empty.json", locomo(session_2=[], session_2_date_time=5)),
    ("turn-int.json", locomo(session_1=[turn("A", "hi"), 5])), ("turn-str.json", locomo(session_1=["x"])),
    ("turn-null.json", locomo(session_1=[None])), ("turn-list.json", locomo(session_1=[[1]])),
    ("no-speaker.json", locomo(session_1=[{"text": "hi"}])), ("blank-speaker.json", locomo(session_1=[turn("", "hi")])),
    ("speaker-int.json", locomo(session_1=[turn(3, "hi")])), ("text-int.json", locomo(session_1=[turn("A", 5)])),
    ("text-null.json", locomo(session_1=[turn("A", None)])),
    ("obs-list.json", locomo(session_1_observation=[1])), ("obs-str.json", locomo(session_1_observation={"A": "x"})),
    ("nested-obs.json", {"conversation": locomo(), "observation": {"session_1_observation": {"A": [], "B": 2}}}),
    ("qa-dict.json", {**locomo(), "qa": {}}), ("qa-items.json", {**locomo(), "qa": [{}, 1]}),
    ("empty.jsonl", b""), ("blank.jsonl", b"\n  \n\r\n\t\n"), ("brace.jsonl", b"{\n"), ("nope.jsonl", f"{GOOD_LINE}\nnope\n".encode()),
    ("bom.jsonl", f"\ufeff{GOOD_LINE}".encode()), ("extra.jsonl", f"{GOOD_LINE} {GOOD_LINE}".encode()),
    ("split.jsonl", line(speaker="A", text="a\u2028b", date="8 May 2023").replace("\\u2028", "\u2028").encode()),
    ("split85.jsonl", "\n".join([GOOD_LINE, '{"speaker": "A", "text": "a\x85b"}']).encode()),
    ("deep.jsonl", f"{GOOD_LINE}\n{'[' * 100000}".encode()), ("list.jsonl", b"[1]"),
    ("bigint.jsonl", f'{GOOD_LINE}\n{{"speaker": "A", "text": -{"2" * 5000}}}'.encode()), ("str.jsonl", f'{GOOD_LINE}\n\n"x"'.encode()), ("int.jsonl", b"5"),
    ("fields.jsonl", line(speaker="A").encode()), ("types.jsonl", line(speaker=" ", text=5, date="x").encode()),
    ("date.jsonl", line(speaker="A", text="t", date=None).encode()), ("utf8.jsonl", f"{GOOD_LINE}\n\xa0".encode("latin-1")),
]


def write(path: Path, content) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


@pytest.mark.parametrize("name,content", BAD_FILES, ids=[n for n, _ in BAD_FILES])
def test_bad_files_give_python_error(core, tmp_path, name, content):
    f = write(tmp_path / name, content)
    assert device_core.core_error(core, *core_args(f, None)) == python_error(f)


def test_unreadable_files_and_path_spelling(core, tmp_path):
    """OSError's strerror (missing file, a directory), and the file named as pathlib spells it."""
    (tmp_path / "dir.jsonl").mkdir()
    write(tmp_path / "bad.json", [])
    for path in [tmp_path / "missing.json", tmp_path / "missing.jsonl", tmp_path / "dir.jsonl",
                 f"{tmp_path}//./bad.json", f"{tmp_path}/bad.json/"]:
        assert device_core.core_error(core, *core_args(path, None)) == python_error(path), path


# --sessions on the LoCoMo conversation above (sessions 1, 2 and 10) and on the demo (1 and 2)
BAD_SPECS = ["x", "", " ", ",", "1,", "1-", "-1", "1--2", "1 2", "1-2-3", "3-1", "010-2", "0", "11", "1-11", "0-1",
             "99999999999999999999", "2-99999999999999999999", "99999999999999999999-99999999999999999998", "3", "1-10",
             "2,4-9", "1'", "é"]


def test_bad_sessions_give_python_error(core, locomo_files):
    for path in [locomo_files[1], SHIPPED[0]]:
        for spec in BAD_SPECS:
            assert device_core.core_error(core, *core_args(path, spec)) == python_error(path, spec), (path, spec)


def test_sessions_in_every_script_s_digits(core):
    """int() reads any Unicode decimal digit: 1, 9 and 0 of each run of ten make "1-90" (no session 90)."""
    zeros = [c for c in map(chr, range(0x110000)) if unicodedata.category(c) == "Nd" and unicodedata.decimal(c) == 0]
    assert len(zeros) > 60
    for z in zeros:
        spec = f"{chr(ord(z) + 1)}-{chr(ord(z) + 9)}{z}"
        assert device_core.core_error(core, *core_args(SHIPPED[0], spec)) == python_error(SHIPPED[0], spec), spec
