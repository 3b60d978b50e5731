"""A synthetic multi-modal ReID benchmark, generated on first use in the real on-disk layouts.

Each identity is a figure whose identity code is split across the modalities, so no single modality
identifies it:

* RGB: the colours of the upper and lower body (a palette of 8);
* NI:  the number of bright horizontal bands on the torso and their brightness;
* TI:  where the hottest body region is (head, chest, belly, legs) and how hot.

Every sample adds what makes real multi-modal ReID hard: background clutter drawn independently in each
modality, a small spatial misalignment between the three modalities, a random body position, and a
camera-dependent appearance (a colour cast in RGB, gain and offset in NI/TI). Images are written as JPEG
files in the RGBNT201 layout (default), the RGBNT100 tiled layout, the MSVR310 layout, the WMVeID863
layout or the Market1501-MM layout (with a junk image, id -1, and a distractor, id 0, in the gallery), so
the real parsers read them.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image

_PALETTE = np.array([[220, 40, 40], [40, 170, 60], [40, 80, 220], [230, 210, 40],
                     [200, 60, 200], [40, 200, 210], [245, 140, 30], [120, 120, 120]], dtype=np.float32)
_LAYOUTS = ("RGBNT201", "RGBNT100", "MSVR310", "WMVeID863", "Market1501-MM")


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


def _save(arr, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


_FOLDERS = {"RGBNT201": {"train": "train_171", "test": "test"},
            "RGBNT100": {"train": "rgbir/bounding_box_train", "query": "rgbir/query",
                         "gallery": "rgbir/bounding_box_test"},
            "MSVR310": {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"},
            "WMVeID863": {"train": "train", "query": "query", "gallery": "test"},
            "Market1501-MM": {"train": "train", "query": "query", "gallery": "gallery"}}


def _write_market_extras(base, codes, size, rng, cam_params):
    """Market-1501's special identities in the gallery: a junk image (id -1, skipped by the parser) and a
    distractor (id 0, kept)."""
    for name, code in (("-1_c1s1_000000_00.jpg", codes[0]), ("0000_c2s1_000025_00.jpg", codes[-1])):
        for m, arr in zip(("RGB", "NI", "TI"), render_sample(code, 1, size, rng, cam_params)):
            _save(arr, os.path.join(base, "gallery", m, name))


def _write_split(base, layout, split, pids, codes, images_per_id, num_cameras, size, rng, cam_params):
    root = os.path.join(base, _FOLDERS[layout][split])
    for pid in pids:
        for k in range(images_per_id):
            camid = k % num_cameras
            rgb, ni, ti = render_sample(codes[pid], camid, size, rng, cam_params)
            if layout == "RGBNT201":
                name = f"{pid + 1:06d}_cam{camid + 1}_{k:02d}.jpg"
                for m, arr in zip(("RGB", "NI", "TI"), (rgb, ni, ti)):
                    _save(arr, os.path.join(root, m, name))
            elif layout == "RGBNT100":
                _save(np.concatenate([rgb, ni, ti], axis=1), os.path.join(root, f"{pid + 1:04d}_c{camid + 1:03d}_{k:02d}.jpg"))
            elif layout == "WMVeID863":
                scene = 999 if split != "train" else k % 3
                name = f"v{camid}_n{k % 2}_s{scene}_{k:04d}.jpg"
                for m, arr in zip(("vis", "ni", "th"), (rgb, ni, ti)):
                    _save(arr, os.path.join(root, f"{pid + 1:04d}", m, name))
            elif layout == "Market1501-MM":
                name = f"{pid + 1:04d}_c{camid + 1}s1_{25 * k:06d}_00.jpg"
                for m, arr in zip(("RGB", "NI", "TI"), (rgb, ni, ti)):
                    _save(arr, os.path.join(root, m, name))
            else:
                scene = k % 2
                name = f"{pid + 1:04d}_s{scene:03d}_v{camid}_{k:03d}.jpg"
                for m, arr in zip(("vis", "ni", "th"), (rgb, ni, ti)):
                    _save(arr, os.path.join(root, f"{pid + 1:04d}", m, name))


def write_synthetic(root, layout="RGBNT201", num_train_ids=48, num_test_ids=24, images_per_id=8,
                    num_cameras=3, size=(64, 32), seed=0):
    """Write the benchmark under ``root/<layout>`` (atomically) unless it is already complete there.

    Returns ``root``. The dataset parser for ``layout`` then reads ``root``.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"unknown synthetic layout {layout!r}; expected one of {_LAYOUTS}")
    if num_train_ids < 2 or num_test_ids < 2 or images_per_id < 2 or num_cameras < 1:
        raise ValueError("synthetic benchmark needs >= 2 train and test ids and >= 2 images per id")
    if layout in ("RGBNT100", "MSVR310", "WMVeID863") and num_cameras > 8:
        raise ValueError(f"the {layout} layout supports at most 8 cameras")
    if layout == "Market1501-MM" and num_cameras > 6:
        raise ValueError("the Market1501-MM layout supports at most 6 cameras")
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
    train_ids = list(range(num_train_ids))
    test_ids = list(range(num_train_ids, num_train_ids + num_test_ids))
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=root)
    try:
        args = (codes, images_per_id, num_cameras, tuple(size), rng, cam_params)
        _write_split(tmp, layout, "train", train_ids, *args)
        if layout == "RGBNT201":
            _write_split(tmp, layout, "test", test_ids, *args)
        else:
            # Query: the first two images of each test id; gallery: the rest.
            _write_split(tmp, layout, "gallery", test_ids, *args)
            _move_query(tmp, layout)
            if layout == "Market1501-MM":
                _write_market_extras(tmp, codes, tuple(size), rng, cam_params)
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


def _move_query(base, layout):
    """Move each test identity's images with index < 2 from the gallery to the query folder."""
    if layout == "RGBNT100":
        gdir, qdir = os.path.join(base, "rgbir/bounding_box_test"), os.path.join(base, "rgbir/query")
        os.makedirs(qdir)
        for name in sorted(os.listdir(gdir)):
            if int(name.rsplit("_", 1)[1].split(".")[0]) < 2:
                os.replace(os.path.join(gdir, name), os.path.join(qdir, name))
        return
    if layout == "Market1501-MM":
        for m in ("RGB", "NI", "TI"):
            gdir, qdir = os.path.join(base, "gallery", m), os.path.join(base, "query", m)
            os.makedirs(qdir)
            for name in sorted(os.listdir(gdir)):
                if int(name.split("_")[2]) < 50:        # frames 0 and 25: the first two images
                    os.replace(os.path.join(gdir, name), os.path.join(qdir, name))
        return
    gdir, qdir = (os.path.join(base, _FOLDERS[layout]["gallery"]), os.path.join(base, _FOLDERS[layout]["query"]))
    for vid in sorted(os.listdir(gdir)):
        for m in ("vis", "ni", "th"):
            src = os.path.join(gdir, vid, m)
            for name in sorted(os.listdir(src)):
                if int(name.rsplit("_", 1)[1].split(".")[0]) < 2:
                    os.makedirs(os.path.join(qdir, vid, m), exist_ok=True)
                    os.replace(os.path.join(src, name), os.path.join(qdir, vid, m, name))


def synthetic_root(base_dir, cfg_synth):
    """Folder for a synthetic benchmark made with these parameters (parameters hashed into the name)."""
    key = json.dumps({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in sorted(cfg_synth.items())},
                     sort_keys=True)
    return os.path.join(base_dir, "Synthetic-" + hashlib.sha1(key.encode()).hexdigest()[:8])
