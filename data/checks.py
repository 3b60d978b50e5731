"""Reading images, and the checks run on every split before any training or evaluation starts.

``read_image`` returns 8-bit RGB for every image format the loaders meet: 16-bit single-channel images
(radiometric thermal or NIR data, PIL modes ``I;16*`` and ``I``) are scaled linearly from 0..65535 to
0..255 instead of being clipped to white by PIL's conversion; floating-point images are refused.

``verify_images`` decodes every file of the splits once at start-up (JPEGs at 1/8 scale, which still reads
the whole compressed stream), so a truncated or unreadable image stops the run before the first epoch,
not at a random later one. ``check_queries`` verifies that the evaluation protocol leaves at least one
query with a true match in the gallery.
"""
import functools
import io
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .datasets import MODALITIES, DatasetError

logger = logging.getLogger("signal.data")

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img, path):
    if img.mode in SIXTEEN_BIT:
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DatasetError(f"{path}: {img.mode} image with values outside 0..65535 "
                               f"({arr.min()}..{arr.max()}); expected 8- or 16-bit data")
        scaled = np.rint(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if img.mode == "F":
        raise DatasetError(f"{path}: floating-point image (PIL mode F); expected 8- or 16-bit data")
    return img.convert("RGB")


def read_image(path):
    """Open an image as 8-bit RGB; an unreadable or missing file is a DatasetError naming the file."""
    try:
        with Image.open(path) as img:
            return _to_rgb(img, path)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


JPEG_MAGIC = b"\xff\xd8\xff"


def read_pixels(path, jpeg=None):
    """``path`` as an H x W x 3 uint8 array (what ``read_image`` reads). ``jpeg``: a faster JPEG decoder
    (``jpeg_decoder``) for the files that are JPEGs; any other file, or one it cannot decode, goes to PIL."""
    try:
        with open(path, "rb") as f:  # one read, not PIL's many small ones
            data = f.read()
        if jpeg is not None and data[:3] == JPEG_MAGIC:
            try:
                return jpeg(data)
            except (RuntimeError, ValueError):  # a file it does not take: PIL reads it (or names the problem)
                pass
        with Image.open(io.BytesIO(data)) as img:
            if img.mode == "RGB":
                img.load()
                return np.asarray(img)
            return np.asarray(_to_rgb(img, path))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def _decode_rgb(decode_jpeg, read_mode, data):
    """JPEG bytes -> H x W x 3 uint8 array with a ``decode_jpeg`` of torchvision's API (C x H x W out)."""
    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode.RGB)
    return pixels.permute(1, 2, 0).numpy()


def torchvision_jpeg(data):
    """JPEG bytes -> H x W x 3 uint8 array, with torchvision's ``decode_jpeg``."""
    from torchvision.io import ImageReadMode, decode_jpeg
    return _decode_rgb(decode_jpeg, ImageReadMode, data)


def torchcodec_jpeg(data):
    """JPEG bytes -> H x W x 3 uint8 array, with TorchCodec's ``decode_jpeg`` (the successor torchvision 0.29
    names for its deprecated image decoding; an optional package, installed to match the torch version)."""
    from torchcodec.decoders import ImageReadMode, decode_jpeg
    return _decode_rgb(decode_jpeg, ImageReadMode, data)


JPEG_DECODERS = (torchvision_jpeg, torchcodec_jpeg)  # in the order they are tried


@functools.lru_cache(maxsize=None)
def jpeg_usable(decode):
    """Whether ``decode`` (one of JPEG_DECODERS) is installed, loads, decodes a JPEG and does not warn of its
    deprecation (torchvision >= 0.29 warns that its image decoding will be removed)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, format="JPEG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            decode(buf.getvalue())
        except Exception:  # not installed, or built for another torch (its library does not load)
            return False
    return not any(issubclass(w.category, (DeprecationWarning, FutureWarning)) for w in caught)


def jpeg_decoder(paths):
    """The fastest JPEG decoder that gives PIL's pixels, checked on ``paths`` (e.g. the first file of each
    modality): the first of JPEG_DECODERS (torchvision's ``decode_jpeg``, TorchCodec's) that is usable
    (``jpeg_usable``) and identical to PIL on every one of them, else None (PIL)."""
    datas = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if data[:3] == JPEG_MAGIC:
            datas.append((p, data))
    for decode in JPEG_DECODERS:
        if not jpeg_usable(decode):
            continue
        try:
            same = [np.array_equal(decode(data), read_pixels(p)) for p, data in datas]
        except (RuntimeError, ValueError, DatasetError):
            continue
        if all(same):
            return decode
        logger.info("%s and PIL differ on %s", decode.__name__, datas[same.index(False)][0])
    return None


def _check_one(path, tiled, tile_order=MODALITIES):
    """(path, problem or None, mode) after decoding ``path``."""
    try:
        with Image.open(path) as img:
            mode, (w, h) = img.mode, img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
            img.load()
            if mode == "F":
                return path, "floating-point image (PIL mode F); expected 8- or 16-bit data", mode
            if tiled and w % len(tile_order):
                return path, f"width {w} is not {len(tile_order)} side-by-side tiles ({' | '.join(tile_order)})", mode
            return path, None, mode
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        return path, str(e) or type(e).__name__, None


def verify_images(splits, tiled=False, workers=None, tile_order=MODALITIES):
    """Decode every image of ``splits`` ({split name: samples}); raise a DatasetError listing the unreadable
    files (up to 20, with the total; a ``tiled`` file must hold ``tile_order``'s tiles). Returns the number of
    files checked."""
    paths = sorted({p for samples in splits.values() for s in samples for p in s.paths})
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _check_one(p, tiled, tuple(tile_order)), paths, chunksize=64))
    bad = [(p, why) for p, why, _ in results if why]
    if bad:
        lines = [f"{len(bad)} of {len(paths)} images cannot be used:"]
        lines += [f"  {p}: {why}" for p, why in bad[:20]]
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more")
        raise DatasetError("\n".join(lines))
    deep = [p for p, _, mode in results if mode in SIXTEEN_BIT]
    if deep:
        logger.warning("%d of %d images are 16-bit (e.g. %s): they are scaled linearly from 0..65535 to 0..255",
                       len(deep), len(paths), deep[0])
    return len(paths)


def count_valid_queries(query, gallery, use_scenes=False):
    """Queries that keep at least one true match once the protocol removes gallery samples of the same
    identity and camera (or scene, ``use_scenes``)."""
    g_pid = np.array([s.pid for s in gallery])
    g_key = np.array([s.sceneid if use_scenes else s.camid for s in gallery])
    from utils.metrics import removed_by_protocol
    valid = 0
    for q in query:
        q_key = q.sceneid if use_scenes else q.camid
        valid += bool(np.any((g_pid == q.pid) & ~removed_by_protocol(q.pid, q_key, g_pid, g_key)))
    return valid


def check_queries(query, gallery, use_scenes, what):
    if count_valid_queries(query, gallery, use_scenes) == 0:
        rule = "scene" if use_scenes else "camera"
        raise DatasetError(f"{what}: no query has a true match in the gallery under the evaluation protocol "
                           f"(same identity seen from another {rule}); nothing could be evaluated")
