"""DATALOADER.CACHE ram: every training image decoded once, at the input size, into one uint8 tensor in shared
memory, [samples, modalities, H, W, 3], which the DataLoader workers read without copying (forked workers
inherit it, spawned ones receive its shared-memory handle).

Its size is printed before it is built; a cache that would not fit in the memory available (and, on Linux,
in /dev/shm, which holds shared memory) is refused with the figures, before anything is decoded.
"""
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from utils.errors import SetupError

from .transforms import as_tensor

logger = logging.getLogger("signal.data")

GIB = 1024 ** 3


class CacheError(SetupError):
    """DATALOADER.CACHE ram cannot hold the training set here."""


def available_memory():
    """Bytes of memory available to new allocations (Linux MemAvailable; else the physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def shm_free():
    """Free bytes of /dev/shm, where Linux keeps shared memory; None elsewhere."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def local_processes():
    """Training processes on this machine, each building its own cache (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_fits(nbytes, what, processes=1, available=None, shm=None):
    """Refuse (CacheError) when ``processes`` caches of ``nbytes`` would not fit in ``available`` memory
    (keeping a quarter of it, at least 2 GiB, for everything else) or in /dev/shm's ``shm`` free bytes."""
    available = available_memory() if available is None else available
    shm = shm_free() if shm is None else shm
    need = nbytes * processes
    each = f" ({processes} processes on this machine, one cache each)" if processes > 1 else ""
    if available is not None and need > available - max(2 * GIB, available // 4):
        raise CacheError(f"DATALOADER.CACHE ram: {what} needs {need / GIB:.2f} GiB{each} but this machine has "
                         f"{available / GIB:.2f} GiB of memory available (a quarter of it, at least 2 GiB, is kept "
                         f"for the rest of the run); set DATALOADER.CACHE none to read the files")
    if shm is not None and need > shm:
        raise CacheError(f"DATALOADER.CACHE ram: {what} needs {need / GIB:.2f} GiB{each} of shared memory but "
                         f"/dev/shm has {shm / GIB:.2f} GiB free (in a container, raise it, e.g. docker run "
                         f"--shm-size); set DATALOADER.CACHE none to read the files")


def shared_uint8(shape):
    """A uint8 tensor of ``shape`` allocated in shared memory."""
    numel = 1
    for s in shape:
        numel *= int(s)
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
    if new_shared is None:
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(numel), 0, tuple(shape))


def build_cache(dataset, workers=1):
    """The decoded training images of ``dataset`` (a MultiModalImageDataset) in one shared uint8 tensor
    [N, M, H, W, 3], decoded by ``workers`` threads."""
    n, mods, (h, w) = len(dataset), dataset.modalities, dataset.transform.size
    nbytes = n * len(mods) * h * w * 3
    what = f"{n} samples x {len(mods)} modalities x {h}x{w}"
    logger.info("DATALOADER.CACHE ram: decoding %s into %.2f GiB of shared memory", what, nbytes / GIB)
    check_fits(nbytes, what, local_processes())
    store = shared_uint8((n, len(mods), h, w, 3))

    def fill(i):
        for k, a in enumerate(dataset.decode(i).values()):
            store[i, k] = as_tensor(a)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(fill, range(n), chunksize=32))
    return store
