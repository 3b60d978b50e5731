"""WMVeID863 (also released as MSVWild863; Zheng et al., 2024): vehicles in RGB (vis), near-infrared (ni)
and thermal (th) under day, night and flare.

Layout: ``<WMVEID863 | WMVeID863 | MSVWild863>/{train,query,test}/<vehicle id>/{vis,ni,th}/NAME.jpg`` with
``NAME = v<camera>_n<night flag>_s<scene>_<index>.jpg``; ``test`` is the gallery, cameras v0..v7 are
already 0-based and the identity is the folder name. The three modalities of a sample are paired by file
name (not by directory-listing position); a file without partners is reported by name.

Protocol: gallery samples with the query's identity and camera are removed (almost every test image has
scene 999, so the scene rule of MSVR310 does not apply).
"""
import os
import re

from .bases import (DatasetError, ReIDDataset, Sample, is_hidden, pair_by_name, read_splits, report_unpaired,
                   require_dir, require_nonempty, save_modalities)
from .registry import register_dataset

_SUBDIRS = ("vis", "ni", "th")
_SPLITS = {"train": "train", "query": "query", "gallery": "test"}
_NAME = re.compile(r"^v(\d)_n(\d+)_s(\d+)_(\d+)")


def parse_wmveid863_name(path):
    """(camera, night flag, scene) of a WMVeID863 file name."""
    m = _NAME.match(os.path.basename(path))
    if not m or int(m.group(1)) > 7:
        raise DatasetError(f"cannot parse file name {path}: expected 'v<camera 0-7>_n<night>_s<scene>_<index>.jpg'")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def read_wmveid863_split(folder, split, skip_unpaired=False):
    require_dir(folder, split)
    samples, unpaired = [], []
    for vid in sorted(os.listdir(folder)):
        vdir = os.path.join(folder, vid)
        if is_hidden(vid) or not os.path.isdir(vdir):
            continue
        if not vid.isdigit():
            raise DatasetError(f"{vdir}: expected a numeric vehicle-id folder")
        dirs = [os.path.join(vdir, s) for s in _SUBDIRS]
        names, lonely = pair_by_name(dirs, _SUBDIRS)
        unpaired += lonely
        for name in names:
            camid, _, scene = parse_wmveid863_name(os.path.join(dirs[0], name))
            samples.append(Sample(tuple(os.path.join(d, name) for d in dirs), int(vid), camid, scene))
    report_unpaired(unpaired, split, skip_unpaired)
    require_nonempty(samples, split, folder)
    return samples


@register_dataset
class WMVeID863(ReIDDataset):
    name = "WMVeID863"
    aliases = ("MSVWild863",)
    folders = ("WMVEID863", "WMVeID863", "MSVWild863")
    max_cameras = 8
    # sizes: no split sizes published in a source checked here; tools ask for them

    def __init__(self, root, test_only=False, skip_unpaired=False):
        base = self.folder(root)
        read = lambda split: read_wmveid863_split(os.path.join(base, _SPLITS[split]), split, skip_unpaired)  # noqa: E731
        super().__init__(*read_splits(read, test_only))

    @classmethod
    def write_synthetic_sample(cls, base, split, sample_id, camid, index, images):
        scene = index % 3 if split == "train" else 999  # test images have scene 999, as in the release
        name = f"v{camid}_n{index % 2}_s{scene}_{index:04d}.jpg"
        save_modalities(os.path.join(base, _SPLITS[split], f"{sample_id:04d}"), _SUBDIRS, name, images)
