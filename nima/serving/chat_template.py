"""Chat messages -> one prompt: a plain-text transcript for base models, or the model's own template.

A base model has never seen chat markup, so the default template is a transcript it can continue
with the letters and punctuation any tokenizer has (even a char tokenizer of Shakespeare)::

    You are a helpful assistant.          <- each system message, as it is, then a blank line

    User: Hello!

    Assistant: Hi. How can I help?

    User: Tell me a story.

    Assistant:

The answer is what the model writes after the last ``Assistant:`` (leading spaces dropped), up
to the next ``\\nUser:`` (a stop string the server adds, so that the model does not write the
user's next turn). Where the tokenizer comes with a Hugging Face ``tokenizer_config.json`` that
holds a ``chat_template`` (a Jinja template; an imported model's folder often has one), or
``nima serve --chat_template FILE`` names one, that template is used instead, rendered in a
sandbox with ``add_generation_prompt=True``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nima.errors import ConfigError

PLAIN_STOP = "\nUser:"
"""The stop string that ends the assistant's turn in the plain template."""

ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` is system, developer (read as system), user or assistant."""

    role: str
    content: str


class ChatTemplate:
    """Turns messages into the prompt text; ``stop`` holds the stop strings the template needs."""

    name = "plain"
    stop: tuple[str, ...] = (PLAIN_STOP,)
    strip_leading_space = True

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt for the assistant's next turn."""
        parts = []
        for m in messages:
            if m.role in ("system", "developer"):
                parts.append(m.content)
            else:
                parts.append(f"{ROLE_NAMES[m.role]}: {m.content}")
        parts.append("Assistant:")
        return "\n\n".join(parts)


class JinjaChatTemplate(ChatTemplate):
    """A Hugging Face chat template (Jinja), rendered in a sandbox."""

    stop = ()
    strip_leading_space = False

    def __init__(self, source: str, name: str, special_tokens: dict[str, str] | None = None) -> None:
        try:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:  # pragma: no cover - jinja2 comes with torch
            raise ConfigError("a model chat template needs jinja2: pip install jinja2") from None

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            self.template = env.from_string(source)
        except TemplateError as err:
            raise ConfigError(f"chat template {name} is not a valid Jinja template: {err}") from None
        self.name = name
        self.special_tokens = special_tokens or {}

    def render(self, messages: Sequence[Message]) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self.template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                **self.special_tokens,
            )
        except TemplateError as err:
            raise ConfigError(f"the chat template cannot render these messages: {err}") from None


def load_chat_template(tokenizer_path: Path | None, explicit: str | Path | None = None) -> ChatTemplate:
    """The template to use: ``explicit`` (a Jinja file, or a tokenizer_config.json with a
    ``chat_template``), else the ``chat_template`` of the tokenizer_config.json next to the
    tokenizer, else the plain transcript."""
    if explicit is not None:
        path = Path(explicit)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read --chat_template {path}: {err.strerror or err}") from None
        if path.suffix == ".json":
            found = _from_config(path, text)
            if found is None:
                raise ConfigError(f'--chat_template {path} holds no "chat_template" string')
            return found
        return JinjaChatTemplate(text, str(path))
    if tokenizer_path is not None:
        config = Path(tokenizer_path).parent / "tokenizer_config.json"
        if config.is_file():
            found = _from_config(config, config.read_text(encoding="utf-8"))
            if found is not None:
                return found
    return ChatTemplate()


def _from_config(path: Path, text: str) -> JinjaChatTemplate | None:
    try:
        settings: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    source = settings.get("chat_template") if isinstance(settings, dict) else None
    if isinstance(source, list):  # several named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str):
        return None
    special = {k: v for k in ("bos_token", "eos_token") if isinstance(v := settings.get(k), str)}
    return JinjaChatTemplate(source, str(path), special)
