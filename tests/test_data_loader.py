"""Windows, collator and loader: shapes, shifted labels, seeded order, resume, epoch offsets, sharding."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from nima.data import (
    IGNORE_INDEX,
    DataCollator,
    ResumableSampler,
    TokenWindowDataset,
    create_dataloader,
    set_loader_epoch,
)
from nima.errors import DataError


def _stream(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def _batches(loader) -> list[torch.Tensor]:
    return [b["input_ids"].clone() for b in loader]


def test_windows_are_consecutive_and_share_one_token() -> None:
    ds = TokenWindowDataset(_stream(100), max_length=8, random_offset=False)
    assert len(ds) == 99 // 8
    for i in range(len(ds)):
        assert ds[i].tolist() == list(range(8 * i, 8 * i + 9))
    assert ds[0].dtype == torch.long


def test_collator_shifts_labels_and_pads_with_ignored_labels() -> None:
    batch = DataCollator(pad_token_id=7)([torch.arange(5), torch.arange(10, 13)])
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3], [10, 11, 7, 7]]
    assert batch["labels"].tolist() == [[1, 2, 3, 4], [11, 12, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long


def test_collator_of_equal_windows_needs_no_padding() -> None:
    batch = DataCollator(pad_token_id=7)([torch.arange(4), torch.arange(10, 14)])
    assert batch["input_ids"].tolist() == [[0, 1, 2], [10, 11, 12]]
    assert batch["labels"].tolist() == [[1, 2, 3], [11, 12, 13]]
    assert batch["input_ids"].is_contiguous() and batch["labels"].is_contiguous()


@pytest.mark.parametrize("training", [True, False])
def test_batched_fetch_gives_the_windows_one_by_one(training: bool) -> None:
    ds = TokenWindowDataset(
        _stream(203), max_length=8, seed=5, random_offset=training, include_partial=not training
    )
    ds.set_epoch(3)
    indices = [len(ds) - 1, 0, 5, -2, 5]  # the validation tail window is shorter
    fetched = ds.__getitems__(indices)
    assert [w.tolist() for w in fetched] == [ds[i].tolist() for i in indices]
    assert all(w.dtype == torch.long for w in fetched)
    for outside in (len(ds), len(ds) + 1, -len(ds) - 1):
        with pytest.raises(IndexError, match="out of range"):
            ds.__getitems__([0, outside])
    # Full windows come stacked already; the collator's batch is the one it would stack itself.
    full = ds.__getitems__([3, 0, 5])
    assert full.stacked.shape == (3, 9)
    from_stack, from_list = DataCollator()(full), DataCollator()(list(full))
    assert all(torch.equal(from_stack[k], from_list[k]) and from_stack[k].is_contiguous() for k in from_list)


def test_validation_windows_cover_every_token() -> None:
    ds = TokenWindowDataset(_stream(50), max_length=8, random_offset=False, include_partial=True)
    targets = [t for i in range(len(ds)) for t in ds[i][1:].tolist()]
    assert targets == list(range(1, 50))  # every token after the first is a target exactly once
    loader = create_dataloader(ds, batch_size=4)
    labels = torch.cat([b["labels"].flatten() for b in loader])
    assert sorted(labels[labels != IGNORE_INDEX].tolist()) == list(range(1, 50))


def test_epoch_offsets_are_seeded_constant_length_and_cover_positions() -> None:
    n, t = 1000, 16
    ds = TokenWindowDataset(_stream(n), max_length=t, seed=3)
    length = len(ds)
    offsets = set()
    covered = np.zeros(n, dtype=bool)
    for epoch in range(60):
        ds.set_epoch(epoch)
        assert len(ds) == length
        offsets.add(ds.offset)
        for i in range(len(ds)):
            window = ds[i].numpy()
            assert len(window) == t + 1
            covered[window] = True
    assert len(offsets) > 5 and max(offsets) < 2 * t
    assert covered[1:].all()  # over epochs every position is trained
    again = TokenWindowDataset(_stream(n), max_length=t, seed=3)
    again.set_epoch(7)
    ds.set_epoch(7)
    assert again.offset == ds.offset


def test_corpus_shorter_than_one_window_says_what_fits() -> None:
    with pytest.raises(DataError, match=r"has 20 tokens.*max_length <= 19"):
        TokenWindowDataset(_stream(20), max_length=32)


def test_loader_is_seeded_and_reproducible() -> None:
    ds = TokenWindowDataset(_stream(2000), max_length=10, seed=0)
    a = _batches(create_dataloader(ds, batch_size=4, seed=1))
    b = _batches(create_dataloader(ds, batch_size=4, seed=1))
    c = _batches(create_dataloader(ds, batch_size=4, seed=2))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=False))
    # Shuffled: not in stream order.
    starts = torch.cat([x[:, 0] for x in a]).tolist()
    assert starts != sorted(starts)


def test_each_iteration_is_a_new_epoch_unless_chosen() -> None:
    ds = TokenWindowDataset(_stream(2000), max_length=10, seed=0)
    loader = create_dataloader(ds, batch_size=4)
    first, second = _batches(loader), _batches(loader)
    assert not torch.equal(torch.cat(first), torch.cat(second))
    set_loader_epoch(loader, 0)
    assert torch.equal(torch.cat(_batches(loader)), torch.cat(first))


def test_resume_mid_epoch_gives_the_remaining_batches() -> None:
    ds = TokenWindowDataset(_stream(3000), max_length=10, seed=5)
    loader = create_dataloader(ds, batch_size=8, seed=9)
    set_loader_epoch(loader, 2)
    full = _batches(loader)
    resumed_loader = create_dataloader(ds, batch_size=8, seed=9)
    set_loader_epoch(resumed_loader, 2, start_batch=5)
    assert len(resumed_loader) == len(full) - 5
    rest = _batches(resumed_loader)
    assert len(rest) == len(full) - 5
    assert all(torch.equal(x, y) for x, y in zip(rest, full[5:], strict=True))


def test_sharding_is_disjoint_and_covers_everything() -> None:
    n, world = 103, 4
    shards = []
    for rank in range(world):
        sampler = ResumableSampler(n, shuffle=True, seed=11, rank=rank, world_size=world, drop_last=True)
        sampler.set_epoch(3)
        shards.append(list(sampler))
    assert all(len(s) == n // world for s in shards)
    flat = [i for s in shards for i in s]
    assert len(flat) == len(set(flat))  # no sample on two ranks
    padded = [list(ResumableSampler(n, seed=11, rank=r, world_size=world)) for r in range(world)]
    assert {i for s in padded for i in s} == set(range(n)) and len({len(s) for s in padded}) == 1


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_global_start_deals_the_rest_of_the_epoch_to_any_number_of_ranks(drop_last: bool) -> None:
    n = 103
    order = ResumableSampler(n, seed=11).epoch_order()
    for world in (1, 2, 3, 4):
        samplers = [
            ResumableSampler(n, seed=11, rank=r, world_size=world, drop_last=drop_last) for r in range(world)
        ]
        for skip in range(samplers[0].per_rank + 1):  # a start at a rank's batch: as before, index for index
            for sampler in samplers:
                sampler.set_start(skip)
                by_rank = list(sampler)
                sampler.set_global_start(skip * world)
                assert list(sampler) == by_rank and len(sampler) == len(by_rank)
        for start in (0, 5, 50, 101):
            shares = []
            for sampler in samplers:
                sampler.set_global_start(start)
                shares.append(list(sampler))
            dealt = [
                i for row in zip(*shares, strict=True) for i in row
            ]  # rank r takes g0 + r, g0 + r + W ...
            left = n - start
            kept = left - left % world if drop_last else left
            assert dealt[:kept] == order[start : start + kept]
            assert dealt[kept:] == ([] if drop_last else order[: len(dealt) - kept])  # padded from the start


def test_loader_shards_by_rank() -> None:
    ds = TokenWindowDataset(_stream(2000), max_length=10)
    assert len(ds) % 2 == 1  # odd: one window is repeated so that both ranks run the same number of steps
    seen = [
        torch.cat(_batches(create_dataloader(ds, batch_size=4, rank=r, world_size=2, drop_last=False)))[:, 0]
        for r in range(2)
    ]
    assert len(seen[0]) == len(seen[1]) == (len(ds) + 1) // 2
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 1
    assert len(set(seen[0].tolist()) | set(seen[1].tolist())) == len(ds)


def test_workers_give_the_same_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Worker processes hand batches back over local (AF_UNIX) sockets; the suite's no-network
    # guard blocks every socket, so allow local ones here.
    real_connect = _real_socket_connect()

    def local_only(sock, address, *args):
        if sock.family != socket.AF_UNIX:
            raise OSError("network access is disabled in tests")
        return real_connect(sock, address, *args)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    ds = TokenWindowDataset(_stream(500), max_length=10, seed=1)
    plain = create_dataloader(ds, batch_size=4, seed=4)
    workers = create_dataloader(ds, batch_size=4, seed=4, num_workers=2, pin_memory=False)
    for epoch in (0, 1):
        set_loader_epoch(plain, epoch)
        set_loader_epoch(workers, epoch)
        a, b = _batches(plain), _batches(workers)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_memmap_file_dataset(tmp_path) -> None:
    path = tmp_path / "train.bin"
    _stream(300).astype("<u2").tofile(path)
    ds = TokenWindowDataset(path, max_length=16, dtype="<u2", random_offset=False)
    assert ds.num_tokens == 300 and ds[1].tolist() == list(range(16, 33))


def _real_socket_connect():
    import _socket

    return _socket.socket.connect
