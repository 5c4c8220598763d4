"""The data side of a run that Nima builds: the prepared corpus (once per node under torchrun,
with a fallback corpus for the quick test), the model config of a fine-tuning start, and the
train and validation loaders."""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset

from nima.checkpoint import load_checkpoint_file
from nima.checkpoint.format import saved_model_config
from nima.config import RunConfig
from nima.data import (
    DataCollator,
    TokenWindowDataset,
    create_dataloader,
    default_data_dir,
    load_prepared,
    prepare,
)
from nima.data.mixture import MixtureDataset, PreparedMixture
from nima.data.prepared import check_token_ids
from nima.distributed import DistributedContext, barrier
from nima.errors import ConfigError, DataError
from nima.files import atomic_write_text

# When tiny Shakespeare cannot be had (no network, no mirror) the quick test trains on Python
# standard-library sources instead: a corpus every machine has.
FALLBACK_NAME = "python_stdlib"
FALLBACK_BYTES = 1_200_000


def stdlib_corpus(data_dir: Path) -> Path:
    """A text file made of Python standard-library sources: a corpus every machine has."""
    target = data_dir / FALLBACK_NAME / f"{FALLBACK_NAME}.txt"
    if target.is_file() and target.stat().st_size > 0:
        return target
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
        if size >= FALLBACK_BYTES:
            break
    if not parts:
        raise DataError(f"no Python standard-library sources found under {stdlib} for the fallback corpus")
    return atomic_write_text(target, "\n".join(parts)[:FALLBACK_BYTES])


def prepare_data(run: RunConfig, allow_fallback: bool, say=print):
    """Prepare (or reuse) the run's data; with ``allow_fallback``, use the stdlib corpus if tiny
    Shakespeare cannot be had. Returns ``PreparedData``."""
    data = run.data
    if data.mixture:
        return prepare_mixture(run, say)
    vocab_size = run.bpe_vocab_size
    kwargs = {
        "data_dir": data.data_dir,
        "encoding": data.encoding,
        "text_field": data.text_field,
        "val_fraction": data.val_fraction,
        "val_files": data.val_files,
        "workers": data.prepare_workers,
        "shard_tokens": data.shard_tokens,
        "tokenizer_sample_bytes": data.tokenizer_sample_bytes,
    }
    try:
        return prepare(data.dataset, data.tokenizer, vocab_size=vocab_size, **kwargs)
    except DataError as err:
        if not (allow_fallback and data.dataset == "tiny_shakespeare"):
            raise
        say(f"note: tiny Shakespeare is not available ({err})")
        root = Path(data.data_dir) if data.data_dir else default_data_dir()
        corpus = stdlib_corpus(root)
        say(
            f"note: FALLBACK CORPUS: training on Python standard-library source text ({corpus}) instead "
            "of tiny Shakespeare; losses and samples are not comparable"
        )
        return prepare(str(corpus), data.tokenizer, vocab_size=vocab_size, **kwargs)


def prepare_data_once_per_node(run: RunConfig, ctx: DistributedContext, allow_fallback: bool, say=print):
    """:func:`prepare_data` under torchrun without duplicated work: rank 0 prepares first; then the
    first process of every other node (which reuses rank 0's result on a shared file system, and
    prepares its own copy otherwise); then everyone else reuses their node's."""
    prepared = None
    for turn in (ctx.is_main, ctx.local_rank == 0 and not ctx.is_main, ctx.local_rank != 0):
        if turn:
            prepared = prepare_data(run, allow_fallback=allow_fallback, say=say)
        barrier()
    return prepared


def prepare_mixture(run: RunConfig, say=print) -> PreparedMixture:
    """The corpora of ``data.mixture``: a prepared folder as it is, anything else prepared as
    ``data.dataset`` would be; the first entry's tokenizer encodes every later one, so that they
    share it (prepared folders must already: one error line otherwise)."""
    items = run.data.mixture or []
    components, tokenizer = [], run.data.tokenizer
    for item in items:
        folder = Path(item["dataset"]).expanduser()
        if (folder / "meta.json").is_file():
            found = load_prepared(folder)
        else:
            one = dataclasses.replace(run.data, dataset=item["dataset"], tokenizer=tokenizer, mixture=None)
            found = prepare_data(run.replace(data=one), allow_fallback=False, say=say)
        tokenizer = str(found.tokenizer_path)
        components.append(found)
    weights = [float(item["weight"]) for item in items]
    mixture = PreparedMixture(components, weights, [item["dataset"] for item in items])
    say(f"data: {mixture.describe()}")
    return mixture


def model_config_from(run: RunConfig, init_from: str | Path, tokenizer: Any, say=print) -> RunConfig:
    """The run with the model config of checkpoint ``init_from`` (the run's own dropout and
    gradient checkpointing kept: they change training, not the weights)."""
    ckpt = load_checkpoint_file(init_from, mmap=True)  # the Trainer reads the weights
    if not isinstance(ckpt.get("model_config"), dict):
        raise ConfigError(f"--init_from {init_from} has no model_config to start from")
    kept = {"dropout": run.model.dropout, "gradient_checkpointing": run.model.gradient_checkpointing}
    model = saved_model_config(ckpt, init_from, **kept)
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the data's tokenizer has {tokenizer.vocab_size} ids but the model of {init_from} only "
            f"{model.vocab_size}; prepare the data with its tokenizer (data.tokenizer: <its tokenizer.json>)"
        )
    say(f"fine-tuning from {init_from}: model config taken from it (the config's model: section is ignored)")
    return run.replace(model=model)


def build_loaders(run: RunConfig, prepared: Any, rank: int, world_size: int):
    """Train and validation loaders over windows of model.max_seq_len tokens, sharded by rank
    (``prepared``: a :class:`PreparedData`, or the :class:`PreparedMixture` of ``data.mixture``)."""
    seed = run.training.seed
    corpora = prepared.components if isinstance(prepared, PreparedMixture) else [prepared]
    pairs = [split_datasets(run, data) for data in corpora]
    if isinstance(prepared, PreparedMixture):
        train_ds = MixtureDataset([train for train, _ in pairs], prepared.weights, seed=seed)
        val_ds = ConcatDataset([val for _, val in pairs])  # every corpus's validation windows
    else:
        train_ds, val_ds = pairs[0]
    collator = DataCollator(prepared.tokenizer)
    workers = run.data.num_workers
    common = {
        "collate_fn": collator,
        "seed": seed,
        "num_workers": workers,
        "pin_memory": run.data.pin_memory,
        "rank": rank,
        "world_size": world_size,
    }
    train = create_dataloader(train_ds, run.training.batch_size, shuffle=True, **common)
    val = create_dataloader(val_ds, run.training.batch_size, shuffle=False, **common) if len(val_ds) else None
    return train, val


def split_datasets(run: RunConfig, data: Any) -> tuple[TokenWindowDataset, TokenWindowDataset]:
    """The train and validation windows of one prepared corpus, every shard's ids checked to fit
    the model's vocabulary (an error names the shard)."""
    context, seed = run.model.max_seq_len, run.training.seed
    train_ds = TokenWindowDataset.from_prepared(
        data, "train", context, seed=seed, align_windows=run.data.align_windows
    )
    val_ds = TokenWindowDataset.from_prepared(data, "val", context, seed=seed)
    if len(train_ds) == 0:
        raise DataError(
            f"the training split of {data.path} is shorter than one window of "
            f"model.max_seq_len={context} tokens; use a smaller max_seq_len or more text"
        )
    for split, dataset in (("train", train_ds), ("val", val_ds)):
        for path, shard in zip(data.shard_paths(split), dataset.tokens.shards, strict=True):
            check_token_ids(shard, path, run.model.vocab_size)
    return train_ds, val_ds
