"""The on-device core's retrieval embedder (device_core/src/embedder.*, wordpiece.*) through its host runner,
against the Python side: WordPiece ids equal to the `tokenizers` library's on the tiny bundle's tokenizer and
on the packaged all-MiniLM-L6-v2 one (and variants of its normalizer), vectors equal to
memlora.runtime.executorch_embedder's on the tiny ExecuTorch bundle, and the Python side's error for a bundle
without an executorch embedder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from memlora.embed import max_length, package_model_dir
from memlora.errors import MemloraError
from memlora.export.bundle import MANIFEST
from memlora.runtime import executorch_embedder
from memlora.runtime.bundle_embedder import BundleEmbedder, open_section
from tests import test_device_core as device

ROOT = device.ROOT

CORPUS = [
    "", " ", "\n", "Caroline went to a support group on 7 May 2023.", "I'm sure they'll say it's fine; DON'T you?",
    "café naïve façade Ünïcödé ÀÉÎÕÜ Ångström", "e\u0301 combining e\u0323\u0301 and e\u0301\u0323", "Crème brûlée",
    "日本語のテキスト、中文文本。", "漢字かな交じり文", "한국어 텍스트 안녕하세요", "emoji 😀🎸☕ 👩‍👩‍👧 🇫🇷 ❤️ 👍🏽",
    "punctuation!!! ...??? --- ((nested)) «quoted» „low“ ¿qué? ¡sí! 1,000.50$ a+b=c <tag> ^_^ `x` |y| ~z",
    "\ttabs\tand\nnewlines\r\nand  runs   of    spaces", "control\x07\x1b\x7fchars and NUL\x00here and \ufffd replacement",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom \u2060word", "nbsp\u00a0here nel\u0085here ideo\u3000space line\u2028sep",
    "\u0130stanbul \u0130I\u0131i", "ΣΟΦΟΣ σοφος ὈΔΥΣΣΕΎΣ", "Straße STRASSE ǅ ǈ ﬁ ﬀ", "Привет мир", "مرحبا بالعالم",
    "नमस्ते दुनिया", "ไทย ภาษา", "0123456789 3.14159 -42 1e-5 ½ ² Ⅻ ٣٤٥", "∑ ∫ √ ≤ ≥ ≠ → ∞",
    "[CLS] written [SEP] in [MASK] text [PAD][UNK]", "[cls] lower [sep]", "supercalifragilistic" * 6,
    "the quick brown fox jumps over the lazy dog " * 40, "日本" * 200,
]

BLOCKS = [(0x0000, 0x05FF), (0x0900, 0x097F), (0x0E00, 0x0E7F), (0x1000, 0x11FF), (0x1E00, 0x2E42), (0x3000, 0x33FF),
          (0x4E00, 0x4FFF), (0xAC00, 0xACFF), (0xFB00, 0xFFFF), (0x1F000, 0x1FAFF)]
"""Every character of these blocks is swept (Latin, combining marks, Greek, Cyrillic, Hebrew, Devanagari, Thai,
Myanmar, Georgian, jamo, Greek extended, punctuation and symbols, kana, CJK, Hangul, compatibility forms,
emoji): blocks where Python's Unicode database and the `tokenizers` library's agree (device_core/README.md)."""
SWEEP = [f"a{chr(c)}b {chr(c)}" for first, last in BLOCKS for c in range(first, last + 1) if not 0xD800 <= c <= 0xDFFF]


def lines(texts: list[str]) -> str:
    return "".join(json.dumps(t) + "\n" for t in texts)


def core_json_lines(core: Path, *args, stdin: str) -> list:
    out = device.run(core, *args, stdin=stdin)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def reference_ids(tokenizer_file: Path, truncation: int, texts: list[str]) -> list[list[int]]:
    """The `tokenizers` library's ids, one text at a time, truncated, not padded (the file may pad)."""
    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_padding()
    tok.enable_truncation(truncation)
    return [tok.encode(t, add_special_tokens=True).ids for t in texts]


def test_ids_equal_the_bundle_embedder_s(core, et_bundle):
    """`embed-tokenize --bundle`: the ids BundleEmbedder.tokenize gives the program, text by text."""
    ref = BundleEmbedder(*open_section(et_bundle, "executorch"), "executorch")
    expected = [ref.tokenize([t])[0][0].tolist() for t in CORPUS]
    assert core_json_lines(core, "embed-tokenize", "--bundle", et_bundle, stdin=lines(CORPUS)) == expected
    truncation = json.loads((et_bundle / MANIFEST).read_text())["embedder"]["tokenizer"]["truncation"]
    assert max(map(len, expected)) == truncation  # the long texts were cut


MINILM = package_model_dir() / "tokenizer.json"
MINILM_NORMALIZER = json.loads(MINILM.read_text())["normalizer"]
VARIANTS = {  # all-MiniLM-L6-v2's file with another normalizer or post-processor: each path of the core's code
    "as packaged": {},
    "accents kept, lower case": {"normalizer": {**MINILM_NORMALIZER, "strip_accents": False}},
    "cased, accents stripped": {"normalizer": {**MINILM_NORMALIZER, "lowercase": False, "strip_accents": True}},
    "cased": {"normalizer": {**MINILM_NORMALIZER, "lowercase": False}},
    "raw text": {"normalizer": {**MINILM_NORMALIZER, "clean_text": False, "handle_chinese_chars": False}},
    "no normalizer": {"normalizer": None},
    "BertProcessing": {"post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_equal_tokenizers_on_minilm(core, tmp_path, variant):
    """The packaged all-MiniLM-L6-v2 tokenizer truncated at the model's length (its file says 128 and pads to
    it; memlora truncates at max_seq_length 256, which `--truncation` passes), on the corpus and the sweep."""
    assert MINILM_NORMALIZER == {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                 "strip_accents": None, "lowercase": True}
    file = tmp_path / "tokenizer.json"
    file.write_text(json.dumps({**json.loads(MINILM.read_text()), **VARIANTS[variant]}))
    truncation = max_length(package_model_dir())
    texts = CORPUS + SWEEP
    expected = reference_ids(file, truncation, texts)
    got = core_json_lines(core, "embed-tokenize", "--tokenizer", file, "--truncation", truncation, stdin=lines(texts))
    assert [t for t, e, g in zip(texts, expected, got) if e != g] == [] and len(got) == len(texts)
    assert max(map(len, expected)) == truncation


def test_unsupported_tokenizers_are_named(core, et_bundle, tmp_path):
    """The decoder's byte-level BPE, another normalizer, lstrip special tokens: one line naming the file and
    the part."""
    decoder = et_bundle / "tokenizer" / "tokenizer.json"
    message = device.core_error(core, "embed-tokenize", "--tokenizer", decoder, "--truncation", "16")
    assert message.startswith(f"{decoder}: ") and "pre_tokenizer" in message and "'ByteLevel'" in message
    minilm = json.loads(MINILM.read_text())
    file = tmp_path / "tokenizer.json"
    file.write_text(json.dumps({**minilm, "normalizer": {"type": "Lowercase"}}))
    message = device.core_error(core, "embed-tokenize", "--tokenizer", file, "--truncation", "16")
    assert message.startswith(f"{file}: ") and "normalizer" in message and "'Lowercase'" in message
    minilm["added_tokens"][4]["lstrip"] = True
    file.write_text(json.dumps(minilm))
    message = device.core_error(core, "embed-tokenize", "--tokenizer", file, "--truncation", "16")
    assert message.startswith(f"{file}: ") and "added_tokens/4/lstrip" in message


def test_vectors_equal_executorch_embedder_s(core, et_bundle):
    """`embed --bundle`: the program's vectors for the core's ids are the Python runtime's for its ids."""
    expected = executorch_embedder.from_bundle(et_bundle).embed(CORPUS)
    got = np.asarray(core_json_lines(core, "embed", "--bundle", et_bundle, stdin=lines(CORPUS)), dtype=np.float32)
    assert got.shape == expected.shape
    cosine = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.99999, cosine.min()
    assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, rtol=0, atol=1e-5)


def test_a_bundle_without_an_executorch_embedder_is_the_python_side_s_error(core, et_bundle, tmp_path):
    """No embedder section, or one without an executorch target: open_section's message word for word."""
    bundle = tmp_path / "b"
    shutil.copytree(et_bundle, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    section = manifest["embedder"]
    for has, changed in (("onnx", {**section, "targets": {"onnx": section["targets"]["executorch"]}}), ("none", None)):
        doc = {**manifest, "embedder": changed} if changed else {k: v for k, v in manifest.items() if k != "embedder"}
        (bundle / MANIFEST).write_text(json.dumps(doc))
        with pytest.raises(MemloraError) as e:
            open_section(bundle, "executorch")
        assert str(e.value).startswith(f"{bundle / MANIFEST}: no executorch embedder (has: {has}); ")
        for command in ("embed", "embed-tokenize"):
            assert device.core_error(core, command, "--bundle", bundle) == str(e.value)


def test_the_core_s_bert_unicode_tables_are_this_python_s():
    """The normalizer's and pre-tokenizer's tables are generated from this interpreter's Unicode database."""
    sys.path.insert(0, str(ROOT / "device_core" / "tools"))
    try:
        import unicode_tables
    finally:
        sys.path.pop(0)
    assert unicode_tables.UNICODE_DATA_TABLE.read_text() == unicode_tables.render_unicode_data()
