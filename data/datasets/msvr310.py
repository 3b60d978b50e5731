"""MSVR310 (Zheng et al., 2022): vehicles in RGB (vis), near-infrared (ni) and thermal (th).

Layout: ``MSVR310/{bounding_box_train,query3,bounding_box_test}/VID/{vis,ni,th}/NAME.jpg``.
``0001_s001_v2_....jpg``: id = chars 0-3, scene = chars 6-8, camera = char 11 (0..7). Evaluation removes
gallery samples of the same id and the same scene.
"""
import os
import re

from .bases import (BenchmarkSizes, DatasetError, ReIDDataset, Sample, is_hidden, pair_by_name, read_splits,
                   report_unpaired, require_dir, require_nonempty, save_modalities)
from .registry import register_dataset

_NAME = re.compile(r"^\d{4}_s\d{3}_v[0-7]")
_SUBDIRS = ("vis", "ni", "th")
_SPLITS = {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"}


def parse_msvr310_name(path):
    name = os.path.basename(path)
    if not _NAME.match(name):
        raise DatasetError(f"cannot parse file name {path}: expected '<4-digit id>_s<3-digit scene>_v<camera 0-7>_...'")
    return int(name[0:4]), int(name[11]), int(name[6:9])


def read_vehicle_folders(folder, split, skip_unpaired=False):
    """Samples of ``folder/VID/{vis,ni,th}``, paired by file name across the three modality folders."""
    require_dir(folder, split)
    samples, unpaired = [], []
    for vid in sorted(os.listdir(folder)):
        vdir = os.path.join(folder, vid)
        if is_hidden(vid) or not os.path.isdir(vdir):
            continue
        dirs = [os.path.join(vdir, sub) for sub in _SUBDIRS]
        names, lonely = pair_by_name(dirs, _SUBDIRS)
        unpaired += lonely
        for name in names:
            paths = tuple(os.path.join(d, name) for d in dirs)
            pid, camid, sceneid = parse_msvr310_name(paths[0])
            samples.append(Sample(paths, pid, camid, sceneid))
    report_unpaired(unpaired, split, skip_unpaired)
    require_nonempty(samples, split, folder)
    return samples


@register_dataset
class MSVR310(ReIDDataset):
    name = "MSVR310"
    protocol = "scene"
    sizes = BenchmarkSizes(train_ids=155, cameras=8, query=591, gallery=1055)
    in_paper = True
    max_cameras = 8

    def __init__(self, root, test_only=False, skip_unpaired=False):
        base = self.folder(root)
        read = lambda split: read_vehicle_folders(os.path.join(base, _SPLITS[split]), split, skip_unpaired)  # noqa: E731
        super().__init__(*read_splits(read, test_only))

    @classmethod
    def write_synthetic_sample(cls, base, split, sample_id, camid, index, images):
        name = f"{sample_id:04d}_s{index % 2:03d}_v{camid}_{index:03d}.jpg"
        save_modalities(os.path.join(base, _SPLITS[split], f"{sample_id:04d}"), _SUBDIRS, name, images)
