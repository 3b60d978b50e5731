"""CPU memory-allocator tuning."""
import ctypes
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory():
    """Ask glibc to serve every allocation from the heap and to keep freed memory there.

    By default glibc gives each large block (the ViT's activations) fresh pages from the kernel and
    returns them on free, so every training step pays for zero-filling them again. Keeping them in the
    heap makes a ViT-B/16 step on CPU markedly faster; the resident size stays at its peak. Returns True
    when the settings were applied (Linux with glibc), False otherwise.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                and mallopt(_M_TOP_PAD, 256 * 2**20))
