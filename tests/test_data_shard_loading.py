"""Loading prepared corpora at scale: windows over several shards, workers that map the shards
instead of copying them, a data position that resumes on another number of processes,
document-aligned windows, and mixtures of corpora."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import model_config

from nima.config import RunConfig
from nima.data import DataConfig, TokenWindowDataset, create_dataloader, load_prepared, set_loader_epoch
from nima.data.documents import aligned_window_starts, document_starts
from nima.data.mixture import MixtureDataset, PreparedMixture
from nima.data.shards import ShardedTokens, ShardWriter
from nima.data.tokenizer import ByteTokenizer
from nima.errors import ConfigError, DataError
from nima.models import create_model
from nima.training import Trainer, TrainingConfig
from nima.training.cursor import DataCursor
from nima.training.run_data import build_loaders

EOT = 256  # the byte tokenizer's end-of-text id


def _documents(count: int, seed: int, longest: int = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, longest))).astype("<u2") for _ in range(count)]


def _stream(docs: list[np.ndarray]) -> np.ndarray:
    """The documents, each ended by EOT, as one stream (what preparation writes)."""
    return np.concatenate([np.append(d, np.uint16(EOT)) for d in docs]).astype("<u2")


def write_prepared(folder: Path, train: np.ndarray, val: np.ndarray, shard_tokens: int = 1000) -> Path:
    """A ``nima-prepared-v2`` folder (byte tokenizer) holding ``train`` and ``val`` in shards."""
    splits = {}
    for split, tokens in (("train", train), ("val", val)):
        writer = ShardWriter(folder / split, np.dtype("<u2"), shard_tokens=shard_tokens, eot=EOT)
        writer.write(tokens)
        shards = writer.close()
        documents = sum(int(s["documents"]) for s in shards)
        splits[split] = {"tokens": len(tokens), "documents": documents, "shards": shards}
    tokenizer = ByteTokenizer(with_eot=True)
    tokenizer.save(folder / "tokenizer.json")
    meta = {
        "format": "nima-prepared-v2",
        "dtype": "<u2",
        "vocab_size": tokenizer.vocab_size,
        "train_tokens": len(train),
        "val_tokens": len(val),
        "splits": splits,
        "tokenizer": {**tokenizer.identity(), "eos_token_id": EOT},
    }
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


@pytest.fixture
def corpus(tmp_path: Path):
    """A v2 folder of ~4,500 train tokens in shards of 1000, with its train stream."""
    train, val = _stream(_documents(150, seed=1)), _stream(_documents(20, seed=2))
    return load_prepared(write_prepared(tmp_path / "corpus", train, val)), train


# ------------------------------------------------------------------------------ windows over shards


@pytest.mark.parametrize("training", [True, False])
def test_windows_cross_shards_as_if_one_stream(corpus, training: bool) -> None:
    data, train = corpus
    assert len(data.shard_paths("train")) >= 4
    options = {"seed": 3, "random_offset": training, "include_partial": not training}
    sharded = TokenWindowDataset.from_prepared(data, "train", 64, **options)
    whole = TokenWindowDataset(train, 64, **options)
    assert sharded.num_tokens == len(train) and len(sharded) == len(whole)
    starts, crossing = sharded.tokens.starts[1:-1], 0
    for epoch in (0, 4):
        sharded.set_epoch(epoch)
        whole.set_epoch(epoch)
        indices = list(range(len(whole)))
        assert [w.tolist() for w in sharded.__getitems__(indices)] == [
            w.tolist() for w in whole.__getitems__(indices)
        ]
        assert all(torch.equal(sharded[i], whole[i]) for i in (0, len(whole) - 1, -1))
        first = sharded.offset + np.arange(len(sharded)) * 64
        crossing += int(np.sum((first[:, None] < starts) & (first[:, None] + 65 > starts)))
    assert crossing > 0  # some windows did cross from one shard into the next
    full = sharded.__getitems__([5, 1, 5, 2])
    assert full.stacked.shape == (4, 65) and full.stacked.dtype == torch.long


def test_workers_map_the_shards_instead_of_copying_them(corpus) -> None:
    data, _ = corpus
    dataset = TokenWindowDataset.from_prepared(data, "train", 32, seed=1)
    sent = pickle.dumps(dataset)
    assert len(sent) < 3000 < dataset.num_tokens * 2  # paths and counts, not the tokens
    again = pickle.loads(sent)
    assert again._stream is None  # mapped on first use, in the worker
    assert all(torch.equal(again[i], dataset[i]) for i in range(0, len(dataset), 7))
    in_memory = TokenWindowDataset(np.asarray(data.tokens("train")[:2000]), 32)
    assert len(pickle.dumps(in_memory)) > 4000  # an array in memory travels as it is
    plain = create_dataloader(dataset, 4, seed=2)
    workers = create_dataloader(dataset, 4, seed=2, num_workers=2)
    for a, b in zip(plain, workers, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_token_ids_are_checked_in_every_shard_and_the_error_names_it(tmp_path: Path) -> None:
    train = _stream(_documents(100, seed=3))
    train[2500] = 300  # in the third shard; the byte tokenizer has 257 ids
    data = load_prepared(write_prepared(tmp_path / "bad", train, _stream(_documents(10, seed=4))))
    run = RunConfig(model=model_config(257), data=DataConfig(tokenizer="byte"))
    with pytest.raises(
        DataError, match=r"train/00002\.bin holds token id 300, but the vocabulary size is 257"
    ):
        build_loaders(run, data, 0, 1)


# ------------------------------------------------------------------- the global data position


def _consume(cursors: list[DataCursor], steps: int | None) -> tuple[list[int], bool]:
    """Run the cursors of one simulated process group side by side for ``steps`` steps (None: to
    the end of the epoch); the windows in global order (each window named by its first token)."""
    world, taken, ended = len(cursors), [], False
    while steps is None or len(taken) < steps:
        windows = [c.next_window() for c in cursors]
        firsts = [w.batches[0]["input_ids"][:, 0] for w in windows]
        rows = len(firsts[0])
        # Row j of rank r holds global sample j * world + r of the step.
        taken.append([int(firsts[r][j]) for j in range(rows) for r in range(world)])
        if windows[0].ends_epoch:
            ended = True
            break
    return [w for step in taken for w in step], ended


def _group(dataset: TokenWindowDataset, world: int, batch: int = 4) -> list[DataCursor]:
    loaders = [create_dataloader(dataset, batch, seed=7, rank=r, world_size=world) for r in range(world)]
    return [DataCursor(loader, 1, world) for loader in loaders]


@pytest.mark.parametrize("resumed_world", [1, 2, 4])
def test_a_run_resumes_on_another_number_of_processes_at_the_same_window(resumed_world: int) -> None:
    dataset = TokenWindowDataset(np.arange(97 * 8 + 3, dtype=np.uint16), 8, seed=5)
    assert len(dataset) == 96  # one epoch fills whole batches of 4 on 1, 2 and 4 processes
    straight, _ = _consume(_group(dataset, 1), None)
    saved = _group(dataset, 2)
    before, _ = _consume(saved, steps=6)
    state = saved[0].state_dict()
    assert state["samples_in_epoch"] == 6 * 4 * 2 and state["data_world_size"] == 2
    resumed = _group(dataset, resumed_world)
    for cursor in resumed:
        cursor.load_state_dict(state)
    assert resumed[0].batch_in_epoch == 48 // (4 * resumed_world)
    after, ended = _consume(resumed, None)
    assert ended and resumed[0].epoch == 1 and resumed[0].batch_in_epoch == 0
    assert before + after == straight  # the same windows in the same order: none twice, none missed
    assert sorted(straight) == [dataset.offset + 8 * i for i in range(96)]
    # The next epoch starts from its beginning, as an uninterrupted run's does.
    next_epoch = _group(dataset, resumed_world)
    for cursor in next_epoch:
        cursor.load_state_dict({**state, "epoch": 1, "batch_in_epoch": 0, "samples_in_epoch": 0})
    assert _consume(next_epoch, 1)[0] == _consume(resumed, 1)[0]


def test_after_a_resume_the_windows_that_fill_no_whole_batch_end_the_epoch_unused() -> None:
    dataset = TokenWindowDataset(np.arange(97 * 8 + 3, dtype=np.uint16), 8, seed=5)
    straight, _ = _consume(_group(dataset, 1), None)
    saved = _group(dataset, 2)
    before, _ = _consume(saved, steps=5)  # 40 windows: 56 are left, not a multiple of 4 x 4
    resumed = _group(dataset, 4)
    for cursor in resumed:
        cursor.load_state_dict(saved[0].state_dict())
    after, ended = _consume(resumed, None)
    assert ended and before + after == straight[:88]  # the last 8 fill no batch of 4 on 4 processes


def test_the_same_number_of_processes_resumes_at_the_same_batch_as_before() -> None:
    dataset = TokenWindowDataset(np.arange(3000, dtype=np.uint16), 10, seed=5)
    for state in (
        {"epoch": 1, "batch_in_epoch": 6, "tokens_seen": 0},  # a checkpoint from before the global position
        {"epoch": 1, "batch_in_epoch": 6, "tokens_seen": 0, "samples_in_epoch": 48, "data_world_size": 2},
    ):
        for rank in range(2):
            loader = create_dataloader(dataset, 4, seed=9, rank=rank, world_size=2)
            cursor = DataCursor(loader, 1, 2)
            cursor.load_state_dict(state)
            assert cursor.batch_in_epoch == 6 and cursor.samples_in_epoch == 48
            rest = [cursor.next_window().batches[0]["input_ids"] for _ in range(3)]
            straight = create_dataloader(dataset, 4, seed=9, rank=rank, world_size=2)
            set_loader_epoch(straight, 1)
            expected = [b["input_ids"] for b in straight][6:9]
            assert all(torch.equal(a, b) for a, b in zip(rest, expected, strict=True))


# ------------------------------------------------------------------------- document-aware windows


def test_document_starts_and_aligned_windows() -> None:
    docs = [np.full(n, 7, dtype="<u2") for n in (5, 20, 3, 40)]
    stream = _stream(docs)  # EOTs at 5, 26, 30 and 71 (the last)
    assert document_starts(ShardedTokens([stream]), EOT).tolist() == [0, 5, 26, 30]
    pieces = ShardedTokens([stream[:6], stream[6:6], stream[6:31], stream[31:]])  # an empty shard too
    assert document_starts(pieces, EOT, chunk_tokens=4).tolist() == [0, 5, 26, 30]
    # One window per 8 tokens of each document; the one at 70 would run past the stream's end.
    starts = aligned_window_starts(np.array([0, 5, 26, 30]), len(stream), 8)
    assert starts.tolist() == [0, 5, 13, 21, 26, 30, 38, 46, 54, 62]

    dataset = TokenWindowDataset(stream, 8, align_windows="documents", eos_token_id=EOT)
    assert len(dataset) == 10 and dataset.max_offset == 0
    assert [int(dataset[i][0]) for i in (1, 4, 5)] == [EOT, EOT, EOT]  # EOT acts as BOS
    batch = dataset.__getitems__([9, 0, 4])
    assert batch.stacked.tolist() == [stream[s : s + 9].tolist() for s in (62, 0, 26)]


def test_aligned_windows_over_shards_match_one_stream(corpus) -> None:
    data, train = corpus
    sharded = TokenWindowDataset.from_prepared(data, "train", 32, align_windows="documents")
    whole = TokenWindowDataset(train, 32, align_windows="documents", eos_token_id=EOT)
    assert len(sharded) == len(whole) > len(TokenWindowDataset(train, 32))
    every = list(range(len(whole)))
    assert sharded.__getitems__(every).stacked.tolist() == whole.__getitems__(every).stacked.tolist()
    assert (
        TokenWindowDataset.from_prepared(data, "val", 32, align_windows="documents").align_windows == "none"
    )
    starts = set(whole.document_starts().tolist())
    assert all(
        s in starts or (s - max(x for x in starts if x <= s)) % 32 == 0 for s in whole._starts.tolist()
    )


def test_aligned_windows_need_an_end_of_text_id() -> None:
    with pytest.raises(
        ConfigError, match="align_windows: documents needs a tokenizer with an end-of-text id"
    ):
        TokenWindowDataset(np.arange(100, dtype=np.uint16), 8, align_windows="documents")
    with pytest.raises(ConfigError, match=r"data.align_windows must be one of none, documents, got 'docs'"):
        DataConfig(align_windows="docs")


# ---------------------------------------------------------------------------------------- mixtures


def _components() -> list[TokenWindowDataset]:
    big = TokenWindowDataset(np.arange(801, dtype=np.uint16), 8, seed=1)  # 99 windows
    small = TokenWindowDataset(np.arange(10_000, 10_049, dtype=np.uint16), 8, seed=1)  # 5 windows
    return [big, small]


def test_a_mixture_interleaves_by_weight_and_wraps_a_small_corpus() -> None:
    mixture = MixtureDataset(_components(), [0.75, 0.25], seed=4)
    assert len(mixture) == 104 and mixture.counts().tolist() == [78, 26]
    which, local = mixture.plan()
    assert sorted(np.bincount(local[which == 1]).tolist()) == [5, 5, 5, 5, 6]  # 26 draws go round 5 windows
    assert len(set(local[which == 0].tolist())) == 78  # the big one: no window twice
    again = MixtureDataset(_components(), [0.75, 0.25], seed=4)
    assert all(torch.equal(again[i], mixture[i]) for i in range(len(mixture)))
    epoch_one = pickle.loads(pickle.dumps(mixture))
    epoch_one.set_epoch(1)
    assert not np.array_equal(epoch_one.plan()[0], which)
    indices = [3, 50, 7, 103]
    assert mixture.__getitems__(indices).stacked.tolist() == [mixture[i].tolist() for i in indices]


def test_a_mixture_resumes_exactly_through_the_loader() -> None:
    mixture = MixtureDataset(_components(), [1, 1], seed=2)
    straight = create_dataloader(mixture, 8, seed=3)
    set_loader_epoch(straight, 2)
    full = [b["input_ids"] for b in straight]
    resumed = create_dataloader(MixtureDataset(_components(), [1, 1], seed=2), 8, seed=3)
    set_loader_epoch(resumed, 2, start_batch=4)
    rest = [b["input_ids"] for b in resumed]
    assert len(rest) == len(full) - 4 and all(torch.equal(a, b) for a, b in zip(rest, full[4:], strict=True))


def test_mixture_config_and_tokenizer_are_checked(tmp_path: Path, corpus) -> None:
    with pytest.raises(ConfigError, match=r"data.mixture\[1\].weight must be a number > 0, got 0"):
        DataConfig(mixture=[{"dataset": "a", "weight": 1}, {"dataset": "b", "weight": 0}])
    with pytest.raises(ConfigError, match=r"unknown key data.mixture\[0\].weigth \(did you mean weight\?\)"):
        DataConfig(mixture=[{"dataset": "a", "weigth": 1}])
    data, _ = corpus
    other = write_prepared(tmp_path / "other", _stream(_documents(30, 5)), _stream(_documents(5, 6)))
    ByteTokenizer(with_eot=False).save(other / "tokenizer.json")
    with pytest.raises(ConfigError, match="has another tokenizer than"):
        PreparedMixture([data, load_prepared(other)], [1.0, 1.0])


def test_a_run_trains_on_a_mixture_of_prepared_folders(tmp_path: Path) -> None:
    from nima.training.recipe import build_run

    a = write_prepared(tmp_path / "a", _stream(_documents(120, 7)), _stream(_documents(15, 8)))
    b = write_prepared(tmp_path / "b", _stream(_documents(60, 9)), _stream(_documents(15, 10)))
    run = RunConfig(
        model=model_config(257),
        training=TrainingConfig(
            max_steps=2,
            batch_size=4,
            output_dir=str(tmp_path / "out"),
            eval_every=2,
            eval_batches=2,
            save_every=0,
            progress_bar=False,
            precision="fp32",
        ),
        data=DataConfig(
            tokenizer="byte",
            align_windows="documents",
            mixture=[{"dataset": str(a), "weight": 3}, {"dataset": str(b), "weight": 1}],
        ),
    )
    said: list[str] = []
    built = build_run(run, say=said.append)
    assert any(f"mixture of 2 corpora: {a} (weight 3), {b} (weight 1)" in line for line in said)
    train, val = built.trainer.parts.train_loader, built.trainer.parts.eval_loader
    mixture = train.dataset
    assert isinstance(mixture, MixtureDataset)
    assert abs(mixture.counts()[0] - 0.75 * len(mixture)) <= 1  # weights 3 : 1
    assert all(c.align_windows == "documents" for c in train.dataset.components)
    assert len(val.dataset) == sum(
        len(TokenWindowDataset.from_prepared(load_prepared(f), "val", 32)) for f in (a, b)
    )
    assert built.train().steps == 2


# --------------------------------------------------------------- 2 processes, then 1 (torchrun)

RESUME_ELSEWHERE_WORKER = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[1])  # the tests folder
    from nima.distributed import init_distributed
    from test_data_shard_loading import windows_run

    ctx = init_distributed("cpu")
    trainer, seen = windows_run(sys.argv[2], max_steps=2, rank=ctx.rank, world_size=ctx.world_size)
    trainer.train()
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, seen)
    if ctx.rank == 0:
        print("RESULT " + json.dumps({"seen": gathered}))
    del trainer
    leave()
    """
)


def windows_run(out: str, max_steps: int, rank: int = 0, world_size: int = 1):
    """A Trainer on windows of 32 over the stream 0, 1, 2, ... (a window's first token is where it
    starts), and the list the model's inputs' first tokens are recorded in, a list per step."""
    dataset = TokenWindowDataset(np.arange(97 * 32 + 6, dtype=np.uint16), 32, seed=0)  # 96 windows
    loader = create_dataloader(dataset, 4, seed=0, rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = create_model(model_config(97 * 32 + 6))
    seen: list[list[int]] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 0].tolist()))
    config = TrainingConfig(
        max_steps=max_steps, batch_size=4, output_dir=out, eval_every=0, save_every=2,
        log_every=100, progress_bar=False, precision="fp32",
    )  # fmt: skip
    return Trainer(model, config, loader), seen


@pytest.mark.slow
def test_a_run_of_two_processes_resumes_on_one_at_the_next_window(tmp_path: Path) -> None:
    from test_training_distributed import WORKER_START, _torchrun

    script = tmp_path / "worker.py"
    script.write_text(WORKER_START + RESUME_ELSEWHERE_WORKER)
    tests = str(Path(__file__).parent)
    report, _ = _torchrun(script, Path(tests), tmp_path / "two")  # argv[1]: the tests, for the import
    steps = [list(zip(*ranks, strict=True)) for ranks in zip(*report["seen"], strict=True)]
    before = [window for step in steps for row in step for window in row]  # rank r's row j: j * 2 + r
    trainer, seen = windows_run(str(tmp_path / "one"), max_steps=22)  # the 80 windows left: 20 steps
    with pytest.warns(UserWarning, match="saved by 2 processes and this run has 1"):
        trainer.load_checkpoint(tmp_path / "two" / "checkpoints" / "step_2.pt")
    trainer.train()
    after = [window for step in seen for window in step]
    dataset = trainer.parts.train_loader.dataset
    dataset.set_epoch(0)
    order = trainer.parts.train_loader.sampler
    order.set_epoch(0)
    assert before + after == [dataset.offset + 32 * i for i in order.epoch_order()]
    assert trainer.epoch == 1 and trainer.batch_in_epoch == 0
