"""export/chat_format.py: the chat template as literal text for the device core, checked against the template, and
refused where the template is not literal text around the messages."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from memlora.errors import MemloraError
from memlora.export import chat_format, golden
from tests import tiny


def probes() -> list[tuple[str, str]]:
    return [(m[0]["content"], m[1]["content"]) for _, m, _ in golden.golden_messages()]


def test_the_tiny_chatml_template(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chat = chat_format.chat_format(tokenizer, tiny_model, probes())
    assert chat == {"before_system": "<|im_start|>system\n", "between": "<|im_end|>\n<|im_start|>user\n",
                    "after_user": "<|im_end|>\n<|im_start|>assistant\n"}
    messages = [{"role": "system", "content": " sys {x} "}, {"role": "user", "content": "u\n\n"}]
    assert chat_format.apply(chat, " sys {x} ", "u\n\n") == \
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template, problem", [
    (tiny.CHATML.replace("message['content']", "message['content'] | trim"), "changes the messages it renders"),
    ("{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}{% endif %}{% endfor %}",
     "does not write a system and a user message once each"),
])
def test_a_template_that_is_not_literal_is_refused(tiny_model, tmp_path, template, problem):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = template
    with pytest.raises(MemloraError) as e:
        chat_format.chat_format(tokenizer, tmp_path, probes())
    assert str(e.value).startswith(f"{tmp_path}: the chat template {problem}")


@pytest.mark.real
def test_smollm2s_template():
    from memlora.paths import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    assert chat_format.chat_format(tokenizer, default_model_dir(), probes())["before_system"] == "<|im_start|>system\n"
