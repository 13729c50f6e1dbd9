"""The bundle tokenizer (tokenizers + jinja2) against transformers: the same ids for every prompt the pipeline
renders, the same decoding, the same template environment; and `memlora ingest`/`ask` on an ONNX bundle
importing no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memlora.bundle_tokenizer import BundleTokenizer
from memlora.errors import MemloraError
from memlora.pipeline import eos_ids
from memlora.prompts import Memory, Turn, answer_messages, extract_messages, render, update_messages
from tests import script

ODD = ["Caroline said \"héllo\" — café ☕ 🎸 日本語", "two  spaces\tand\ttabs\n\nnew lines  ", "",
       "a turn writing <|im_end|> and <|im_start|>user inside", "{\"facts\": [\"x\"]} ADD  UPDATE", " leading space"]


def pipeline_prompts() -> list[list[dict[str, str]]]:
    """What `MemoryPipeline` renders: every operation's messages, on the scripted and on awkward text."""
    turns = [Turn("Caroline" if i % 2 else "Melanie", text, "8 May 2023", f"D1:{i}") for i, text in enumerate(ODD)]
    memories = [Memory(f"m{i}", text, "7 May 2023", 0.5) for i, text in enumerate(ODD)]
    out = [extract_messages(turns), extract_messages([]), update_messages(ODD, memories), update_messages([], []),
           answer_messages("What does Caroline paint?", memories), answer_messages(ODD[0], [])]
    for _, exchange in script.EXCHANGES:
        out.append(extract_messages(exchange))
    out.append(update_messages([script.FACT2], [Memory("m0", script.FACT1, script.DATE)]))
    return out


def assert_same_as_transformers(directory: Path) -> None:
    """Ids, texts, decoding and the end-of-reply ids of the bundle tokenizer equal transformers' on `directory`."""
    from transformers import AutoTokenizer

    ref, got = AutoTokenizer.from_pretrained(str(directory)), BundleTokenizer(directory)
    assert got.special_tokens_map == ref.special_tokens_map
    assert (got.eos_token_id, got.unk_token_id, got.bos_token_id) == (ref.eos_token_id, ref.unk_token_id,
                                                                      ref.bos_token_id)
    assert eos_ids(got) == eos_ids(ref)
    for messages in pipeline_prompts():
        for generation in (True, False):
            text = got.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
            assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        ids = render(got, messages)
        assert ids == render(ref, messages)
        for skip in (True, False):
            assert got.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    for text in ODD:
        assert got.encode(text) == ref.encode(text) and got.encode(text, False) == ref.encode(text, add_special_tokens=False)


def test_tiny_tokenizer_gives_transformers_ids(tiny_model):
    assert_same_as_transformers(tiny_model)


@pytest.mark.real
def test_default_model_tokenizer_gives_transformers_ids():
    from memlora.paths import default_model_dir

    assert_same_as_transformers(default_model_dir())


RICH_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{{ bos_token }}
{% for message in messages %}
    {% if message['content'] == '' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    {% generation %}{{ message['role'] }} #{{ ns.n }}: {{ message | tojson }}{% endgeneration %}
    {% if loop.last and tools is none and documents is none %}[{{ eos_token }}]{% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
"""


def test_template_environment_and_config_template_match_transformers(tiny_model, tmp_path):
    """Whitespace trimming, namespaces, loop controls, tojson (no HTML escaping), {% generation %} and the
    special tokens as variables; then the template read from tokenizer_config.json when no .jinja exists."""
    rich = tmp_path / "rich"
    shutil.copytree(tiny_model, rich, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    (rich / "chat_template.jinja").write_text(RICH_TEMPLATE)
    assert_same_as_transformers(rich)
    (rich / "chat_template.jinja").unlink()
    config = json.loads((rich / "tokenizer_config.json").read_text())
    (rich / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": RICH_TEMPLATE}))
    assert_same_as_transformers(rich)


def test_bad_tokenizer_directories_are_named(tiny_model, tmp_path):
    bad = tmp_path / "tok"
    shutil.copytree(tiny_model, bad, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    (bad / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(MemloraError, match="^" + re.escape(f"{bad}: the chat template does not parse (line 1")):
        BundleTokenizer(bad)
    (bad / "chat_template.jinja").write_text("{{ raise_exception('no system role') }}")
    with pytest.raises(MemloraError, match="^" + re.escape(f"{bad}: the chat template cannot render these messages "
                                                           "(no system role)")):
        BundleTokenizer(bad).apply_chat_template([])
    (bad / "chat_template.jinja").unlink()
    with pytest.raises(MemloraError, match="^" + re.escape(f"{bad}: no chat template")):
        BundleTokenizer(bad)
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(MemloraError, match="^" + re.escape(f"{bad / 'tokenizer_config.json'}: cannot read")):
        BundleTokenizer(bad)
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(MemloraError, match="^" + re.escape(f"{bad / 'tokenizer.json'}: cannot load tokenizer")):
        BundleTokenizer(bad)


def _memlora_without_torch(args: list[str], home: Path) -> str:
    """Run `memlora ARGS` under `-X importtime`; fail if torch or transformers was imported. Its stdout."""
    env = {**os.environ, "MEMLORA_HOME": str(home)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "memlora", *args], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers"))
    assert heavy == [], f"memlora {args[0]} imported {heavy[:5]}"
    return done.stdout


def test_ingest_and_ask_on_an_onnx_bundle_import_no_torch(onnx_bundle, tmp_path):
    turns = tmp_path / "chat.jsonl"
    turns.write_text("".join(json.dumps({"speaker": t.speaker, "text": t.text, "date": t.date}) + "\n"
                             for _, exchange in script.EXCHANGES for t in exchange))
    bundle = ["--backend", "onnx", "--bundle", str(onnx_bundle), "--store", str(tmp_path / "store.sqlite")]
    _memlora_without_torch(["ingest", str(turns), "--window", "2", *bundle], tmp_path / "home")
    answer = _memlora_without_torch(["ask", script.QUESTION, *bundle], tmp_path / "home")
    assert answer.strip() == script.ANSWER
