"""Chat messages -> one prompt: the documented plain transcript, and a model's own Jinja template
from its tokenizer_config.json or a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nima.errors import ConfigError
from nima.serving.chat_template import PLAIN_STOP, ChatTemplate, Message, load_chat_template

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_the_plain_template_is_the_documented_transcript():
    messages = [
        Message("system", "You are a poet."),
        Message("user", "Who art thou?"),
        Message("assistant", "A rose."),
        Message("developer", "Be brief."),
        Message("user", "More!"),
    ]
    prompt = ChatTemplate().render(messages)
    assert prompt == (
        "You are a poet.\n\nUser: Who art thou?\n\nAssistant: A rose.\n\n"
        "Be brief.\n\nUser: More!\n\nAssistant:"
    )
    assert ChatTemplate.stop == (PLAIN_STOP,) == ("\nUser:",)


def test_the_tokenizers_own_template_is_used_where_it_has_one(tmp_path: Path):
    (tmp_path / "tokenizer.json").write_text("{}")
    assert load_chat_template(tmp_path / "tokenizer.json").name == "plain"
    config = {"chat_template": CHATML, "eos_token": "<|im_end|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = load_chat_template(tmp_path / "tokenizer.json")
    prompt = template.render([Message("user", "hi")])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert template.stop == () and not template.strip_leading_space


def test_an_explicit_template_file_wins(tmp_path: Path):
    path = tmp_path / "chat.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}=>")
    assert load_chat_template(None, path).render([Message("user", "x")]) == "[user] x =>"


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.jinja", "{% for %}", "not a valid Jinja template"),
        ("config.json", json.dumps({"eos_token": "x"}), "holds no"),
        ("broken.json", "{", "not valid JSON"),
    ],
)
def test_bad_templates_are_one_line_errors(tmp_path: Path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_chat_template(None, path)


def test_a_template_that_raises_is_a_config_error(tmp_path: Path):
    path = tmp_path / "strict.jinja"
    path.write_text("{{ raise_exception('only user messages') }}")
    template = load_chat_template(None, path)
    with pytest.raises(ConfigError, match="only user messages"):
        template.render([Message("system", "x")])


def test_a_sandboxed_template_cannot_reach_python(tmp_path: Path):
    path = tmp_path / "evil.jinja"
    path.write_text("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ConfigError):
        load_chat_template(None, path).render([Message("user", "x")])
