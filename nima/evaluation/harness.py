"""The EleutherAI lm-evaluation-harness on a Nima checkpoint: the ``nima`` model and ``run_harness_tasks``.

:class:`NimaLM` is the harness's model interface over a Nima checkpoint, registered under the
name ``nima``. It answers the harness's three kinds of request:

- ``loglikelihood``: the built-in scorer, :func:`nima.evaluation.tasks.loglikelihoods` (one
  scorer for ``nima eval --task`` and the harness: the sum of the continuation's log-probabilities
  and whether greedy decoding would produce it, left-truncated to the model's window);
- ``loglikelihood_rolling``: a whole text's log-likelihood in the harness's own rolling windows
  (each token scored once, the first from the end-of-text token, every later window a full
  context of ``max_seq_len`` tokens);
- ``generate_until``: Nima's cached generation (greedy, or sampled with ``temperature``, ``top_k``,
  ``top_p``), stopped at any of the ``until`` strings, the end-of-text token or ``max_gen_toks``.

Requests are batched (``batch_size`` sequences per forward pass) on any device. This module
imports ``lm_eval``; nothing else in Nima imports it except lazily (``pip install 'nima[harness]'``).
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nima.errors import ConfigError, DataError

try:
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, make_table
except ImportError as err:
    raise ConfigError(
        f"the lm-evaluation-harness is not installed ({err}); pip install 'nima[harness]' (or lm-eval)"
    ) from None

from nima.evaluation.choice_scoring import Encoded, score_encoded
from nima.evaluation.tasks import loglikelihoods
from nima.inference.generate import encode_prompt
from nima.inference.loading import load_for_inference, pick_device
from nima.runtime.precision import autocast_for, inference_precision

logger = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256
GENERATION_ROUND = 16
"""New tokens per generation call in ``generate_until``: stop strings are checked between calls."""
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")
"""Generation settings a task may give besides ``until``, ``max_gen_toks`` and ``do_sample``."""
MODEL_ARGS = ("checkpoint", "tokenizer", "data_dir", "device", "batch_size", "precision", "max_gen_toks")
"""What ``--model_args`` may set (``max_batch_size``, which the harness passes, is ignored)."""


@register_model("nima")
class NimaLM(LM):
    """A Nima checkpoint as an lm-evaluation-harness model (``--model nima --model_args
    checkpoint=PATH``).

    Args:
        checkpoint: a checkpoint written by training (``.pt``); its tokenizer is found as
            ``nima eval`` finds it, or given by ``tokenizer`` / ``data_dir``.
        device: auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps.
        batch_size: sequences per forward pass (default 32); the harness's ``auto`` means 32.
        precision: fp32 (default: the weights' own precision, which the harness's ``hf`` backend
            uses on the exported model), bf16, fp16, or auto (bf16 on GPUs that support it).
        max_gen_toks: tokens ``generate_until`` produces when a task does not say (default 256).

    :meth:`from_model` wraps a model and tokenizer already in memory.
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        tokenizer: str | Path | None = None,
        data_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
    ) -> None:
        super().__init__()
        if checkpoint is None:
            raise ConfigError("the nima model needs a checkpoint: --model_args checkpoint=PATH")
        loaded = load_for_inference(checkpoint, tokenizer, device or "auto", data_dir)
        self._setup(loaded.model, loaded.tokenizer, batch_size, precision, max_gen_toks)
        self.checkpoint = Path(checkpoint)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "fp32",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    ) -> NimaLM:
        """The harness model over a GPT and its Nima tokenizer already in memory (on its device)."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._setup(model, tokenizer, batch_size, precision, max_gen_toks)
        lm.checkpoint = None
        return lm

    def _setup(
        self, model: torch.nn.Module, tokenizer: Any, batch_size: Any, precision: str, max_gen: Any
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        self.batch_size = _positive_int(
            "batch_size", DEFAULT_BATCH_SIZE if _is_auto(batch_size) else batch_size
        )
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen)
        self.autocast_dtype = inference_precision(precision, self._device).dtype
        self.max_length = int(model.config.max_seq_len)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> NimaLM:
        """``checkpoint=PATH,batch_size=16`` (the harness's ``--model_args``)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> NimaLM:
        """The model from a dict of ``--model_args`` and the harness's ``batch_size`` / ``device``."""
        args = {**arg_dict, **{k: v for k, v in (additional_config or {}).items() if v is not None}}
        args.pop("max_batch_size", None)
        device = args.get("device")
        if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line passes cuda:0 unless told otherwise; its hf backend then runs
            # on the CPU, and so does this one.
            logger.warning("device %s: no CUDA GPU here, running on the %s", device, pick_device("auto"))
            args["device"] = "auto"
        unknown = sorted(set(args) - set(MODEL_ARGS))
        if unknown:
            raise ConfigError(
                f"the nima model has no argument {', '.join(unknown)}; it takes {', '.join(MODEL_ARGS)}"
            )
        paths = ("checkpoint", "tokenizer", "data_dir")
        return cls(**{k: (str(v) if k in paths else v) for k, v in args.items()})

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records about the model in its results."""
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }

    # -- the three requests ----------------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log P(continuation | context), is_greedy)`` for each ``(context, continuation)``."""
        pairs = [tuple(req.args) for req in requests]
        results = loglikelihoods(
            self.model,
            self.tokenizer,
            pairs,
            batch_size=self.batch_size,
            device=self._device,
            progress=not disable_tqdm,
            autocast_dtype=self.autocast_dtype,
        )
        for pair, result in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each ``(text,)``, conditioned on the end-of-text token only."""
        prefix = self._prefix_token()
        owners, windows = [], []
        for i, req in enumerate(requests):
            ids = self.tokenizer.encode(req.args[0])
            for context, targets in map(
                make_disjoint_window, get_rolling_token_windows(ids, prefix, self.max_length, context_len=1)
            ):
                owners.append(i)
                windows.append(Encoded(tuple(context), tuple(targets)))
        scores = score_encoded(
            self.model,
            windows,
            batch_size=self.batch_size,
            device=self._device,
            autocast_dtype=self.autocast_dtype,
            progress=not disable_tqdm,
        )
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, scores.answers, strict=True):
            totals[i] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The continuation of each ``(context, gen_kwargs)``, cut before the first ``until`` string.

        Requests with the same settings and prompt length are generated together, ``batch_size``
        rows at a time; a prompt keeps its last ``max_seq_len`` tokens."""
        outputs = [""] * len(requests)
        groups: dict[tuple[Any, int], list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            settings = self._generation_settings(gen_kwargs)
            ids = encode_prompt(self.tokenizer, context)[-self.max_length :]
            groups.setdefault((settings, len(ids)), []).append((i, ids))
        for (settings, _), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                rows = members[start : start + self.batch_size]
                texts = self._generate_rows([ids for _, ids in rows], settings)
                for (i, _), text in zip(rows, texts, strict=True):
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs

    # -- helpers ---------------------------------------------------------------------------------

    def _prefix_token(self) -> int:
        """What a text is conditioned on: the end-of-text token, else a newline."""
        return int(encode_prompt(self.tokenizer, "")[0])

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[Any, ...]:
        kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks))
        until = tuple(s for s in kwargs.pop("until") if s)
        max_gen = _positive_int("max_gen_toks", kwargs.pop("max_gen_toks"))
        # Greedy unless the task samples (Hugging Face's rule: do_sample without a temperature is 1.0).
        sample = kwargs.pop("do_sample", False)
        kwargs["temperature"] = float(kwargs.get("temperature", 1.0)) if sample else 0.0
        unknown = sorted(set(kwargs) - set(SAMPLING_KEYS))
        if unknown:
            raise ConfigError(
                f"the nima model cannot use the generation setting(s) {', '.join(unknown)}; "
                f"it takes until, max_gen_toks, do_sample, {', '.join(SAMPLING_KEYS)}"
            )
        sampling = tuple((k, kwargs[k]) for k in SAMPLING_KEYS if kwargs.get(k) is not None)
        return until, max_gen, sampling

    def _generate_rows(self, prompts: list[list[int]], settings: tuple[Any, ...]) -> list[str]:
        """Generate for prompts of one length together, in rounds of GENERATION_ROUND tokens; a row
        leaves the batch once it has produced a stop string or the end-of-text token."""
        until, max_gen, sampling = settings
        eos = self.tokenizer.eos_token_id
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)  # (B, T)
        texts = [""] * len(prompts)
        decoders = [self.tokenizer.decode_stream() for _ in prompts]
        active = list(range(len(prompts)))
        produced = 0
        with autocast_for(self._device, self.autocast_dtype):
            while active and produced < max_gen:
                n = min(GENERATION_ROUND, max_gen - produced)
                out = self.model.generate(ids, n, eos_token_id=eos, **dict(sampling))  # (B, T + <=n)
                new, produced = out[:, ids.shape[1] :].tolist(), produced + n
                still = []
                for row, (index, tokens) in enumerate(zip(active, new, strict=True)):
                    ended = eos is not None and eos in tokens
                    tokens = tokens[: tokens.index(eos)] if ended else tokens
                    texts[index] += "".join(decoders[index].push(t) for t in tokens)
                    if not ended and not any(s in texts[index] for s in until):
                        still.append(row)
                if len(new[0]) < n:  # every row produced the end-of-text token
                    break
                active = [active[row] for row in still]
                ids = out[still]
        ends = [text + decoder.flush() for text, decoder in zip(texts, decoders, strict=True)]
        return [_cut_at_stops(text, until) for text in ends]


def _cut_at_stops(text: str, until: Sequence[str]) -> str:
    for stop in until:
        text = text.split(stop)[0]
    return text


def _is_auto(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.startswith("auto"))


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise ConfigError(f"the nima model's {name}={value!r} must be a whole number of at least 1")
    return number


# -- running tasks ---------------------------------------------------------------------------------


def run_harness_tasks(
    *,
    checkpoint: str | Path,
    tasks: list[str],
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    include_path: str | None = None,
    tokenizer: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> str:
    """Run the harness's ``tasks`` on ``checkpoint`` through :class:`NimaLM`; returns the harness's
    results table (Markdown) to print.

    ``limit`` scores only the first N examples of each task; ``include_path`` is a folder of task
    YAML files of one's own (a task may also be named by its YAML file's path). An unknown task
    name is a ConfigError naming close ones; a dataset the harness cannot download (offline) is a
    DataError.
    """
    results = evaluate_with_harness(
        NimaLM(checkpoint, tokenizer=tokenizer, data_dir=data_dir, device=device, batch_size=batch_size),
        tasks,
        limit=limit,
        include_path=include_path,
    )
    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def evaluate_with_harness(
    lm: LM,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    include_path: str | Path | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``lm`` on ``tasks`` with Nima's checks of the names and of the
    datasets' download; returns the harness's results dict."""
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise ConfigError("no harness tasks given; name them, e.g. --harness_tasks hellaswag,arc_easy")
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ConfigError(f"limit={limit!r} must be a whole number of examples, at least 1")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"include_path {include_path} is not a folder of task YAML files")
    manager = _task_manager(str(Path(include_path).resolve()) if include_path else None)
    _check_task_names(tasks, manager.all_tasks)
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=log_samples
        )
    except OSError as err:  # ConnectionError, the hub's errors, a dataset not in the cache
        detail = " ".join(str(err).split())[:300]
        offline = " (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if _offline() else ""
        raise DataError(
            f"the harness could not fetch the dataset of {', '.join(tasks)}{offline}: {detail}; "
            "run once with network access (the datasets cache keeps it) or use a local task YAML"
        ) from None


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None) -> Any:
    """The harness's index of its ~15,000 task names (and those under ``include_path``): several
    seconds to build, so built once per folder and process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def _check_task_names(tasks: Sequence[str], known: Sequence[str]) -> None:
    names = set(known)
    for task in tasks:
        if task in names or task.endswith((".yaml", ".yml")) and Path(task).is_file():
            continue
        close = difflib.get_close_matches(task, known, n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown harness task {task!r} ({hint}`lm-eval ls tasks` lists the "
            f"{len(names)} known ones; a task of one's own needs its include_path)"
        )


def _offline() -> bool:
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in names)
