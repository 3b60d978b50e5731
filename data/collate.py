"""Collating image batches in the DataLoader workers into shared memory that is reused from batch to batch.

torch's default collate stacks each batch of a worker into newly allocated shared memory (19 MB for a training
batch of three 256 x 128 modalities), whose pages the kernel zero-fills and maps again at every batch: about
15 ms per batch on the 2-core development machine, a fifth of a worker's time when it reads the files. Here
each worker keeps a few buffers per batch shape, one uint8 tensor [B, H, W, 3] per modality, and stacks a batch
into buffers that the main process no longer uses. The rest of the batch (identities, cameras, erasing boxes,
seeds: a few hundred bytes) travels by value. A batch has the keys, values, dtypes and shapes of torch's
``default_collate``; each modality's images are one tensor over a storage of their own, as there.

A buffer is taken again only when no tensor of the main process refers to it any more. When the main process
receives a batch it looks at the batches it received before: those whose image storages have been freed (every
tensor viewing them dropped, whoever held them: the training loop, a list of batches, a view of one image) are
marked free in a small flag array shared with their worker. A worker that finds no free buffer allocates one
more, up to ``SLOTS``; beyond that it collates as torch does. Nothing waits on anything.
"""
import os
import threading

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import default_collate, get_worker_info

from .cache import shared_uint8

SLOTS = 8  # buffers per worker and batch shape: the prefetched batches, the one in use and one awaiting release


class SharedImageCollate:
    """``collate_fn`` of the loaders: ``default_collate``'s batch of dataset items (dicts), with the uint8 images
    of ``modalities`` stacked into reused shared buffers when it runs in a worker."""

    def __init__(self, modalities):
        self.modalities = tuple(modalities)

    def __call__(self, items):
        if get_worker_info() is None or not items or not all(isinstance(it, dict) for it in items):
            return default_collate(items)
        shape = _image_shape(items, self.modalities)
        slot = None if shape is None else _worker_buffers().take((len(self.modalities), len(items)) + shape)
        if slot is None:
            return default_collate(items)
        k, buffers, flags = slot
        for buf, m in zip(buffers, self.modalities):
            torch.stack([it[m] for it in items], out=buf)
        rest = default_collate([{key: v for key, v in it.items() if key not in self.modalities} for it in items])
        return _Shipped(buffers, k, flags, self.modalities, _by_value(rest))


def _image_shape(items, modalities):
    """The [H, W, C] shape of every image of ``modalities`` in ``items`` when all are uint8 tensors of one shape,
    else None (those batches are collated as torch does)."""
    first = items[0].get(modalities[0]) if modalities else None
    if not isinstance(first, torch.Tensor) or first.dtype != torch.uint8:
        return None
    shape = first.shape
    for it in items:
        for m in modalities:
            x = it.get(m)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.shape != shape:
                return None
    return tuple(shape)


class _WorkerBuffers:
    """A worker's buffers: per batch shape, up to SLOTS tuples of one shared tensor per modality, and a shared
    int8 flag per tuple (1 while a batch in it may be in use in the main process)."""

    def __init__(self):
        self.pid = os.getpid()
        self.pools = {}  # (modalities, B, H, W, C) -> (list of buffer tuples, flags)

    def take(self, shape):
        """(k, buffers, flags) of a free tuple for a batch of ``shape``, marked in use; None when all SLOTS are."""
        if shape not in self.pools:
            self.pools[shape] = ([], torch.zeros(SLOTS, dtype=torch.int8).share_memory_())
        buffers, flags = self.pools[shape]
        busy = flags.numpy()
        for k in range(len(buffers)):
            if busy[k] == 0:
                busy[k] = 1
                return k, buffers[k], flags
        if len(buffers) == SLOTS:
            return None
        buffers.append(tuple(shared_uint8(shape[1:]) for _ in range(shape[0])))
        busy[len(buffers) - 1] = 1
        return len(buffers) - 1, buffers[-1], flags


_buffers = None


def _worker_buffers():
    """This process's buffers (a forked worker starts with none of its parent's)."""
    global _buffers
    if _buffers is None or _buffers.pid != os.getpid():
        _buffers = _WorkerBuffers()
    return _buffers


class _Shipped:
    """A worker's batch on its way to the main process: the buffers (sent as shared-memory handles), their flag
    and the rest of the batch by value. Unpickled, it is the batch (``_receive``)."""

    def __init__(self, buffers, k, flags, modalities, rest):
        self.args = (buffers, k, flags, modalities, rest)

    def __reduce__(self):
        return _receive, self.args


_lock = threading.Lock()  # the main thread, or the pin-memory thread, receives
_received = []  # (weak references to a batch's image storages, flags, k) of batches not yet seen freed


def _release_freed():
    """Mark free the buffers of received batches whose image storages have all been freed."""
    keep = []
    for refs, flags, k in _received:
        if all(r.expired() for r in refs):
            flags[k] = 0
        else:
            keep.append((refs, flags, k))
    _received[:] = keep


def _receive(buffers, k, flags, modalities, rest):
    """The batch, in the main process: images viewing the worker's buffers, the rest as tensors again."""
    with _lock:
        _release_freed()
        _received.append(([StorageWeakRef(b.untyped_storage()) for b in buffers], flags, k))
    batch = dict(zip(modalities, buffers))
    batch.update(_from_value(rest))
    return batch


def _by_value(obj):
    """``obj`` (a collated batch without its images) with its tensors as NumPy arrays, which pickle by value
    instead of through one shared-memory file each."""
    if isinstance(obj, torch.Tensor):
        try:
            return obj.numpy()
        except TypeError:  # a dtype NumPy lacks (bfloat16): sent as torch sends it
            return obj
    return _map(_by_value, obj)


def _from_value(obj):
    """``_by_value`` undone: ``default_collate`` leaves no NumPy arrays, so every array was a tensor."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return _map(_from_value, obj)


def _map(fn, obj):
    """``fn`` applied to the values of a dict, list, tuple or namedtuple; anything else unchanged."""
    if isinstance(obj, dict):
        return {k: fn(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(fn(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(fn(v) for v in obj)
    return obj
