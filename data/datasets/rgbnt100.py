"""RGBNT100 (Li et al., AAAI 2020): vehicles; each file holds RGB | NI | TI side by side.

Layout: ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/NAME.jpg``; ids and cameras from
the regex ``(\\d+)_c(\\d+)`` (cameras 1..8 in the name, 0-based in the code).
"""
import os
import re

from .bases import DatasetError, ReIDDataset, Sample, list_images, require_nonempty

_NAME = re.compile(r"(\d+)_c(\d+)")


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


class RGBNT100(ReIDDataset):
    name = "RGBNT100"
    tiled = True

    def __init__(self, root, test_only=False):
        base = os.path.join(root, "RGBNT100", "rgbir")
        super().__init__([] if test_only else read_tiled_folder(os.path.join(base, "bounding_box_train"), "train"),
                         read_tiled_folder(os.path.join(base, "query"), "query"),
                         read_tiled_folder(os.path.join(base, "bounding_box_test"), "gallery"))
