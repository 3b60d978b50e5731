"""The workers' collate into reused shared buffers (data/collate.py): torch's batches, and no batch the main
process still holds is ever written over."""
import os

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from data import collate
from data.collate import SLOTS, SharedImageCollate

MODS = ("RGB", "NI")


def allocated_buffers():
    """Buffer tuples this worker has allocated so far."""
    b = collate._buffers
    return sum(len(bufs) for bufs, _ in b.pools.values()) if b is not None and b.pid == os.getpid() else 0


class Coded(Dataset):
    """Items whose every pixel encodes the sample, with the fields of a training item; each also reports how
    many buffers its worker had allocated when it was read."""

    def __init__(self, n=24, size=(6, 4)):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        item = {m: torch.full(self.size + (3,), (7 * i + k) % 256, dtype=torch.uint8) for k, m in enumerate(MODS)}
        item["erase"] = {m: torch.tensor([i, k, 2, 3], dtype=torch.int32) for k, m in enumerate(MODS)}
        item.update(pid=i // 2, seed=10 ** 12 + i, index=i, allocated=allocated_buffers())
        return item


def loader(workers=1, batch=4, ds=None):
    return DataLoader(ds or Coded(), batch_size=batch, shuffle=False, num_workers=workers,
                      persistent_workers=workers > 0, collate_fn=SharedImageCollate(MODS))


def expected(batch):
    return default_collate([Coded()[int(i)] for i in batch["index"]])


def same_values(batch):
    """Whether ``batch``'s images and fields are what its samples hold."""
    ref = expected(batch)
    return all(torch.equal(batch[m], ref[m]) for m in MODS) and all(
        torch.equal(batch["erase"][m], ref["erase"][m]) for m in MODS)


def test_a_worker_batch_is_torchs_batch():
    for batch in loader(workers=1):
        ref = expected(batch)
        assert batch.keys() == ref.keys()
        for key in ("pid", "seed", "index"):
            assert batch[key].dtype == ref[key].dtype and torch.equal(batch[key], ref[key])
        for m in MODS:
            x = batch[m]
            assert x.dtype == torch.uint8 and x.shape == ref[m].shape and torch.equal(x, ref[m])
            assert x.untyped_storage().nbytes() == x.numel()  # a storage of its own, as torch's
            assert batch["erase"][m].dtype == torch.int32 and torch.equal(batch["erase"][m], ref["erase"][m])


def test_buffers_are_reused_once_the_main_process_drops_its_batches():
    dl, allocated, n = loader(workers=1), [], 0
    for _ in range(4):
        for batch in dl:
            allocated.append(int(batch["allocated"].max()))
            n += 1
    assert n == 24 and max(allocated) < SLOTS   # 24 batches from a few buffers


def test_a_held_batch_or_view_is_never_written_over():
    """Every batch of four epochs kept (3 x SLOTS batches), or only a view of one image: all keep their
    values, the worker stops allocating at SLOTS buffers and collates the rest as torch does."""
    dl = loader(workers=1)
    kept = [batch for _ in range(4) for batch in dl]
    assert len(kept) == 3 * SLOTS and all(same_values(b) for b in kept)
    assert int(kept[-1]["allocated"].max()) == SLOTS
    views, codes, dl = [], [], loader(workers=2)
    for _ in range(3):
        for batch in dl:
            views.append(batch["RGB"][1:2, :1])  # one pixel row of one image keeps the buffer busy
            codes.append((7 * int(batch["index"][1])) % 256)
            del batch
    assert all(int(v.min()) == int(v.max()) == c for v, c in zip(views, codes))
