"""A synthetic multi-modal ReID benchmark, generated on first use in the real on-disk layouts.

Each identity is a figure whose identity code is split across the modalities, so no single modality
identifies it:

* RGB: the colours of the upper and lower body (a palette of 8);
* NI:  the number of bright horizontal bands on the torso and their brightness;
* TI:  where the hottest body region is (head, chest, belly, legs) and how hot.

Every sample adds what makes real multi-modal ReID hard: background clutter drawn independently in each
modality, a small spatial misalignment between the three modalities, a random body position, and a
camera-dependent appearance (a colour cast in RGB, gain and offset in NI/TI). Images are written as JPEG
files by the writer each dataset keeps next to its parser (RGBNT201 by default; Market1501-MM adds a junk
image, id -1, and a distractor, id 0, to the gallery), so the real parsers read them.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from .bases import MODALITIES, BenchmarkSizes
from .registry import register_dataset
from .rgbnt201 import RGBNT201

_PALETTE = np.array([[220, 40, 40], [40, 170, 60], [40, 80, 220], [230, 210, 40],
                     [200, 60, 200], [40, 200, 210], [245, 140, 30], [120, 120, 120]], dtype=np.float32)


def _identity_codes(num_ids, rng):
    """Distinct (upper, lower, bands, band_level, hot_region, hot_level) codes, one per identity."""
    codes, seen = [], set()
    while len(codes) < num_ids:
        code = (int(rng.integers(8)), int(rng.integers(8)), int(rng.integers(1, 5)), int(rng.integers(2)),
                int(rng.integers(4)), int(rng.integers(2)))
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def _clutter(img, rng, gray):
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(3, 8))):
        y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        y1, x1 = y0 + int(rng.integers(2, h // 3)), x0 + int(rng.integers(2, w // 2))
        img[y0:y1, x0:x1] = rng.uniform(30, 230) if gray else rng.uniform(30, 230, size=3)


def _figure_boxes(h, w, cy, cx):
    """Head, torso and legs boxes (y0, y1, x0, x1) of a figure centred at (cy, cx)."""
    bw = max(4, int(w * 0.45))
    head = (cy - int(0.42 * h), cy - int(0.28 * h), cx - bw // 4, cx + bw // 4)
    torso = (cy - int(0.28 * h), cy + int(0.04 * h), cx - bw // 2, cx + bw // 2)
    legs = (cy + int(0.04 * h), cy + int(0.40 * h), cx - bw // 2 + 1, cx + bw // 2 - 1)
    return head, torso, legs


def _box(img, box, value):
    h, w = img.shape[:2]
    y0, y1, x0, x1 = box
    img[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = value


def render_sample(code, camid, size, rng, cam_params):
    """Render (RGB, NI, TI) uint8 arrays of shape [H, W, 3] for identity ``code`` seen by ``camid``."""
    h, w = size
    upper, lower, bands, band_level, hot_region, hot_level = code
    cy = h // 2 + int(rng.integers(-2, 3))
    cx = w // 2 + int(rng.integers(-2, 3))
    out = []
    for m in range(3):
        # Small per-modality misalignment of the figure.
        dy, dx = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
        head, torso, legs = _figure_boxes(h, w, cy + dy, cx + dx)
        if m == 0:
            img = np.empty((h, w, 3), np.float32)
            img[:] = rng.uniform(60, 200, size=3)
            _clutter(img, rng, gray=False)
            _box(img, head, np.array([225, 180, 150], np.float32))
            _box(img, torso, _PALETTE[upper])
            _box(img, legs, _PALETTE[lower])
            img = img * cam_params[camid]["rgb_gain"]
        else:
            img = np.empty((h, w), np.float32)
            img[:] = rng.uniform(40, 140)
            _clutter(img, rng, gray=True)
            if m == 1:
                _box(img, head, 110.0)
                _box(img, torso, 90.0)
                _box(img, legs, 100.0)
                y0, y1, x0, x1 = torso
                step = max(1, (y1 - y0) // (2 * bands + 1))
                for b in range(bands):
                    ys = y0 + step * (2 * b + 1)
                    _box(img, (ys, ys + step, x0, x1), 200.0 + 50.0 * band_level)
            else:
                _box(img, head, 150.0)
                _box(img, torso, 150.0)
                _box(img, legs, 150.0)
                y0, y1, x0, x1 = (head, torso, torso, legs)[hot_region]
                if hot_region in (1, 2):  # upper / lower half of the torso
                    mid = (y0 + y1) // 2
                    y0, y1 = (y0, mid) if hot_region == 1 else (mid, y1)
                _box(img, (y0, y1, x0, x1), 205.0 + 50.0 * hot_level)
            img = img * cam_params[camid]["ir_gain"] + cam_params[camid]["ir_offset"]
            img = np.repeat(img[..., None], 3, axis=2)
        img = img + rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _camera_params(num_cameras, rng):
    return [{"rgb_gain": rng.uniform(0.75, 1.25, size=3).astype(np.float32),
             "ir_gain": float(rng.uniform(0.8, 1.15)), "ir_offset": float(rng.uniform(-15, 15))}
            for _ in range(num_cameras)]


def synthetic_layouts():
    """Names of the registered datasets that can write a synthetic copy of themselves."""
    from .registry import dataset_names, get_dataset
    return tuple(n for n in dataset_names(aliases=False) if get_dataset(n).write_synthetic_sample is not None)


def write_synthetic(root, layout="RGBNT201", num_train_ids=48, num_test_ids=24, images_per_id=8,
                    num_cameras=3, size=(64, 32), seed=0):
    """Write the benchmark under ``root/<layout>`` (atomically) unless it is already complete there.

    ``layout`` is a registered dataset with a synthetic writer (``synthetic_layouts()``); its parser then
    reads ``root``. The first two images of each test identity are the query, the rest the gallery (the
    whole test set for a dataset that evaluates with gallery = query). Returns ``root``.
    """
    from .registry import get_dataset
    cls = get_dataset(layout) if layout in synthetic_layouts() else None
    if cls is None:
        raise ValueError(f"unknown synthetic layout {layout!r}; expected one of {synthetic_layouts()}")
    if num_train_ids < 2 or num_test_ids < 2 or images_per_id < 2 or num_cameras < 1:
        raise ValueError("synthetic benchmark needs >= 2 train and test ids and >= 2 images per id")
    if cls.max_cameras is not None and num_cameras > cls.max_cameras:
        raise ValueError(f"the {layout} layout supports at most {cls.max_cameras} cameras")
    params = dict(layout=layout, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                  images_per_id=images_per_id, num_cameras=num_cameras, size=list(size), seed=seed)
    target = os.path.join(root, layout)
    marker = os.path.join(target, ".synthetic.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == params:
                return root
        raise FileExistsError(f"{target} holds a synthetic benchmark made with other parameters; "
                              f"remove it or choose another DATASETS.ROOT_DIR")
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists and is not a synthetic benchmark; refusing to overwrite it")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = _identity_codes(num_train_ids + num_test_ids, rng)
    cam_params = _camera_params(num_cameras, rng)
    size = tuple(size)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=root)
    try:
        for pid in range(num_train_ids + num_test_ids):
            for k in range(images_per_id):
                split = "train" if pid < num_train_ids else "query" if cls.gallery_is_query or k < 2 else "gallery"
                images = render_sample(codes[pid], k % num_cameras, size, rng, cam_params)
                cls.write_synthetic_sample(tmp, split, pid + 1, k % num_cameras, k, images)
        if cls.synthetic_specials:
            # Market-1501's special identities in the gallery: a junk image (id -1, which the parser skips)
            # and a distractor (id 0, kept)
            for sample_id, camid, k, code in ((-1, 0, 0, codes[0]), (0, 1, 1, codes[-1])):
                cls.write_synthetic_sample(tmp, "gallery", sample_id, camid, k,
                                           render_sample(code, 1, size, rng, cam_params))
        with open(os.path.join(tmp, ".synthetic.json"), "w") as f:
            json.dump(params, f)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same benchmark first: keep its copy if it is complete.
            if not os.path.isfile(marker):
                raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return root


def synthetic_root(base_dir, cfg_synth):
    """Folder for a synthetic benchmark made with these parameters (parameters hashed into the name)."""
    key = json.dumps({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(cfg_synth.items())},
                     sort_keys=True)
    return os.path.join(base_dir, "Synthetic-" + hashlib.sha1(key.encode()).hexdigest()[:8])


@register_dataset
class Synthetic(RGBNT201):
    """``DATASETS.NAMES Synthetic``: the generated benchmark in the RGBNT201 layout, written on first use
    under DATASETS.ROOT_DIR in a folder named by a hash of ``DATASETS.SYNTHETIC`` (all three modalities are
    written; ``DATASETS.SYNTHETIC.MODALITIES`` chooses the ones read, e.g. RGB and TI)."""
    name = "Synthetic"
    folders = ("RGBNT201",)
    sizes = BenchmarkSizes(train_ids=48, cameras=3, query=192, gallery=192)  # the DATASETS.SYNTHETIC defaults
    write_synthetic_sample = None
    in_paper = False

    @classmethod
    def modalities_for(cls, cfg):
        return tuple(cfg.DATASETS.SYNTHETIC.MODALITIES)

    @classmethod
    def check_config(cls, cfg):
        mods = list(cfg.DATASETS.SYNTHETIC.MODALITIES)
        if not mods or len(set(mods)) != len(mods) or not set(mods) <= set(MODALITIES):
            raise ValueError(f"config: DATASETS.SYNTHETIC.MODALITIES must name one or more of {list(MODALITIES)} "
                             f"(each once; the order is the batch order), got {mods}")

    @classmethod
    def from_config(cls, cfg, test_only=False):
        from utils import comm
        s = cfg.DATASETS.SYNTHETIC
        params = dict(num_train_ids=s.NUM_TRAIN_IDS, num_test_ids=s.NUM_TEST_IDS, images_per_id=s.IMAGES_PER_ID,
                      num_cameras=s.NUM_CAMERAS, size=tuple(s.SIZE), seed=s.SEED)
        folder = synthetic_root(cfg.DATASETS.ROOT_DIR, params)
        with comm.same_outcome():  # rank 0 writes; the others wait for it (and fail with it)
            if comm.is_main_process():
                write_synthetic(folder, RGBNT201.name, **params)
        return cls(folder, test_only=test_only, skip_unpaired=cfg.DATASETS.SKIP_UNPAIRED,
                   modalities=cls.modalities_for(cfg))
