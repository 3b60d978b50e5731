"""RGBNT100 (Li et al., AAAI 2020): vehicles; each file holds RGB | NI | TI side by side.

Layout: ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/NAME.jpg``; ids and cameras from
the regex ``(\\d+)_c(\\d+)`` (cameras 1..8 in the name, 0-based in the code).
"""
import os
import re

import numpy as np

from .bases import (BenchmarkSizes, DatasetError, ReIDDataset, Sample, list_images, read_splits, require_nonempty,
                   save_image)
from .registry import register_dataset

_NAME = re.compile(r"(\d+)_c(\d+)")
_SPLITS = {"train": "rgbir/bounding_box_train", "query": "rgbir/query", "gallery": "rgbir/bounding_box_test"}


def parse_rgbnt100_name(path):
    m = _NAME.search(os.path.basename(path))
    if not m or not 1 <= int(m.group(2)) <= 8:
        raise DatasetError(f"cannot parse file name {path}: expected '<id>_c<camera 1..8>...'")
    return int(m.group(1)), int(m.group(2)) - 1


def read_tiled_folder(folder, split):
    samples = []
    for name in list_images(folder):
        path = os.path.join(folder, name)
        pid, camid = parse_rgbnt100_name(path)
        samples.append(Sample((path, path, path), pid, camid))
    require_nonempty(samples, split, folder)
    return samples


@register_dataset
class RGBNT100(ReIDDataset):
    name = "RGBNT100"
    tiled = True
    sizes = BenchmarkSizes(train_ids=50, cameras=8, query=1715, gallery=8575)
    in_paper = True
    max_cameras = 8

    def __init__(self, root, test_only=False, skip_unpaired=False):
        """``skip_unpaired`` has nothing to do here: one file holds the three modalities."""
        base = self.folder(root)
        read = lambda split: read_tiled_folder(os.path.join(base, _SPLITS[split]), split)  # noqa: E731
        super().__init__(*read_splits(read, test_only))

    @classmethod
    def write_synthetic_sample(cls, base, split, sample_id, camid, index, images):
        save_image(np.concatenate(images, axis=1),
                   os.path.join(base, _SPLITS[split], f"{sample_id:04d}_c{camid + 1:03d}_{index:02d}.jpg"))
