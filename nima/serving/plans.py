"""From a checked request to the engine's work: the prompts as token ids, checked against the
model (its vocabulary and context), and one sampling plan per choice (``n`` per prompt).

Seeds: choice ``i`` of a request (counting ``n`` choices per prompt, prompt after prompt) samples
with ``seed + i``, each with its own generator, so that a seeded request gives the same text
whatever else the server is doing. Without a seed, a random one is drawn per request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from nima.errors import NimaError
from nima.inference.generate import encode_prompt
from nima.inference.stop_strings import check_stop_strings
from nima.models.batch_decoding import RowSampling
from nima.serving.chat_template import ChatTemplate
from nima.serving.engine import Engine
from nima.serving.schemas import MAX_STOP_SEQUENCES, APIError, ChatCompletionRequest, CompletionRequest

MAX_CHOICES = 16
"""Most continuations one request may ask for (``n`` times the number of prompts)."""


@dataclass
class ServedModel:
    """What the routes need to know about the model being served."""

    engine: Engine
    tokenizer: Any
    model_id: str
    context_length: int
    chat_template: ChatTemplate
    api_key: str | None = None
    created: int = 0


@dataclass
class Plan:
    """A checked request: its prompts (ids), each choice's sampling, and how to answer."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    choices: list[tuple[int, RowSampling]]
    """(prompt index, sampling) per choice, in choice order."""
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool

    def usage(self, completion_tokens: list[int]) -> dict[str, int]:
        """The OpenAI ``usage`` object: each prompt counted once, every choice's new tokens."""
        prompt_tokens = sum(len(ids) for ids in self.prompts)
        completion = sum(completion_tokens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }


def check_model(served: ServedModel, model: str | None) -> None:
    """A 404 APIError unless ``model`` is None or the served model's id."""
    if model is not None and model != served.model_id:
        raise APIError(
            404,
            f"The model '{model}' does not exist; this server serves '{served.model_id}' (GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def completion_prompts(served: ServedModel, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """The prompts as token ids (and text, for echo)."""
    prompt = req.prompt
    vocab = served.engine.model.config.vocab_size
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]  # one prompt
    if not prompt:
        raise APIError(400, "prompt is an empty list", param="prompt", code="invalid_value")
    ids, texts = [], []
    for i, one in enumerate(prompt):
        if isinstance(one, str):
            try:
                ids.append(encode_prompt(served.tokenizer, one))
            except NimaError as err:
                raise APIError(400, str(err), param="prompt", code="invalid_value") from None
            texts.append(one)
            continue
        if not one or min(one) < 0 or max(one) >= vocab:
            raise APIError(
                400,
                f"prompt {i}: token ids must be a non-empty list of ids in 0..{vocab - 1}",
                param="prompt",
                code="invalid_value",
            )
        ids.append(list(one))
        texts.append(served.tokenizer.decode(one))
    return ids, texts


def plan_request(
    served: ServedModel,
    req: CompletionRequest | ChatCompletionRequest,
    prompts: list[list[int]],
    texts: list[str],
    max_tokens: int | None,
    extra_stop: tuple[str, ...],
) -> Plan:
    """Check the request against the model (n, stop strings, context) and plan its choices."""
    if req.n * len(prompts) > MAX_CHOICES:
        raise APIError(
            400,
            f"n={req.n} for {len(prompts)} prompt(s) asks for {req.n * len(prompts)} completions; "
            f"this server makes at most {MAX_CHOICES} per request",
            param="n",
            code="invalid_value",
        )
    try:
        stop = check_stop_strings(req.stop, MAX_STOP_SEQUENCES)
    except NimaError as err:
        raise APIError(400, str(err), param="stop", code="invalid_value") from None
    context = served.context_length
    base = req.seed if req.seed is not None else secrets.randbits(62)
    choices = []
    for p, ids in enumerate(prompts):
        if len(ids) > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens, and the prompt has {len(ids)}; "
                "shorten it",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        wanted = context - len(ids) if max_tokens is None else max_tokens
        if len(ids) + wanted > context:
            raise APIError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(ids) + wanted} tokens ({len(ids)} in the prompt, {wanted} for the completion); "
                "lower max_tokens or shorten the prompt",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if wanted == 0 and isinstance(req, ChatCompletionRequest):
            raise APIError(
                400, "the messages fill the whole context", param="messages", code="context_length_exceeded"
            )
        for j in range(req.n):
            seed = (base + p * req.n + j) % 2**64
            choices.append(
                (
                    p,
                    RowSampling(
                        max_new_tokens=wanted,
                        temperature=req.temperature,
                        top_k=req.top_k,
                        top_p=None if req.top_p >= 1 else req.top_p,
                        repetition_penalty=req.repetition_penalty,
                        eos_token_id=served.tokenizer.eos_token_id,
                        seed=seed,
                    ),
                )
            )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Plan(
        prompts,
        texts,
        choices,
        stop + tuple(s for s in extra_stop if s not in stop),
        req.stream,
        include_usage,
    )
