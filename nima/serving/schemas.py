"""The OpenAI API's request bodies, checked, and its error shape.

Requests are validated from the raw JSON (strict types: ``"temperature": "hot"`` or ``"0.5"`` is
an error, not a guess) against pydantic models of ``/v1/completions`` and ``/v1/chat/completions``.
An unknown field is an error, as in the OpenAI API; fields of that API which Nima does not
implement are accepted at their neutral value (``presence_penalty: 0``, ``logprobs: null`` ...)
and refused otherwise, so that a client never silently gets something other than it asked for.
Two extensions that vLLM also accepts: ``top_k`` and ``repetition_penalty``.

Every problem becomes an :class:`APIError`, which the app turns into the OpenAI error body::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}
"""

from __future__ import annotations

from typing import Any, Literal

from nima.serving.extra import require_serve_extra

try:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError
except ImportError:  # the serve extra is not installed: say so in one line
    require_serve_extra()
    raise

MAX_STOP_SEQUENCES = 4
"""As in the OpenAI API."""


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False
    """Send one more chunk before ``[DONE]`` with the request's token usage (and no choices)."""


class _Sampling(_Strict):
    """Fields both endpoints share."""

    model: str | None = None
    """The served model's id (``GET /v1/models``); may be left out."""
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    """Reproducible sampling; choice i of ``n`` uses seed + i."""
    user: str | None = None
    # Nima (and vLLM) extensions
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float = Field(1.0, gt=0)
    # OpenAI fields accepted only at their neutral value
    frequency_penalty: float | None = 0.0
    presence_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    def check_unsupported(self) -> None:
        """APIError for an OpenAI feature Nima does not implement, asked for."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0):
                raise unsupported(name, "use repetition_penalty (> 1 discourages repeats)")
        if self.logit_bias:
            raise unsupported("logit_bias")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    """Text, several texts, token ids, or several lists of token ids."""
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.logprobs is not None:
            raise unsupported("logprobs")
        if self.suffix:
            raise unsupported("suffix")
        if self.best_of not in (None, self.n):
            raise unsupported("best_of", "use n")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ResponseFormat(_Strict):
    type: Literal["text"]


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    """Default: as many as the context holds after the prompt."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of max_tokens."""
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.logprobs or self.top_logprobs:
            raise unsupported("logprobs")
        if self.tools or self.tool_choice not in (None, "none"):
            raise unsupported("tools")

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def unsupported(param: str, hint: str = "") -> APIError:
    return APIError(
        400,
        f"{param} is not supported by this server" + (f"; {hint}" if hint else ""),
        param=param,
        code="unsupported_parameter",
    )


def parse_request(model: type[_Sampling], body: bytes) -> Any:
    """The request ``body`` (raw JSON) validated as ``model``, or an APIError (400) that names
    the first problem and its field."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as err:
        raise _as_api_error(err) from None
    request.check_unsupported()
    return request


_PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


def _as_api_error(err: ValidationError) -> APIError:
    first = err.errors(include_url=False)[0]
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first['msg']}", code="invalid_json")
    if kind == "model_type":  # the body is JSON but not an object
        return APIError(400, "the request body must be a JSON object", code="invalid_json")
    param = _param(loc)
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        return APIError(400, f"{param} is required", param=param, code="missing_parameter")
    if loc and loc[0] == "prompt":
        return APIError(400, f"prompt must be {_PROMPT_SHAPES}", param="prompt", code="invalid_type")
    if loc and loc[0] == "stop" and len(loc) <= 2:
        return APIError(400, "stop must be a string or a list of strings", param="stop", code="invalid_type")
    return APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def _param(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "role")`` -> ``messages[0].role``, without pydantic's union branch names."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]", "int", "float"):
            continue
        elif "[" in str(part) or str(part)[:1].isupper():  # union branch labels
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"
