"""Market1501-MM: Market-1501 with near-infrared and thermal images generated for each RGB image (the
multi-modal person benchmark of several 2025 papers).

Layout: ``<Market1501-MM | Market-1501-RGBNT | market1501_to_RGBNT201_dark>/{train,query,gallery}/{RGB,NI,TI}/
NAME.jpg`` with Market-1501 names ``<pid>_c<camera>s<sequence>_<frame>_<box>.jpg``; the same name in the
three folders is one sample, paired by name. Cameras 1..6 in names (0-based in the code); identity -1
(junk) is skipped, identity 0 (distractors) kept in the gallery. Protocol: same identity and camera
removed.
"""
import os
import re

from .bases import (BenchmarkSizes, DatasetError, ReIDDataset, Sample, pair_by_name, read_splits, report_unpaired,
                   require_dir, require_nonempty, save_modalities)
from .registry import register_dataset

_SUBDIRS = ("RGB", "NI", "TI")
_SPLITS = {"train": "train", "query": "query", "gallery": "gallery"}
_NAME = re.compile(r"^(-?\d+)_c(\d)s(\d+)_")


def parse_market_name(path):
    """(pid, 0-based camera) of a Market-1501 file name."""
    m = _NAME.match(os.path.basename(path))
    if not m or not 1 <= int(m.group(2)) <= 6:
        raise DatasetError(f"cannot parse file name {path}: expected '<pid>_c<camera 1-6>s<seq>_<frame>_<box>.jpg'")
    return int(m.group(1)), int(m.group(2)) - 1


def read_market_split(folder, split, skip_unpaired=False, keep_distractors=False):
    require_dir(folder, split)
    dirs = [os.path.join(folder, s) for s in _SUBDIRS]
    names, unpaired = pair_by_name(dirs, _SUBDIRS)
    report_unpaired(unpaired, split, skip_unpaired)
    samples = []
    for name in names:
        pid, camid = parse_market_name(os.path.join(dirs[0], name))
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        samples.append(Sample(tuple(os.path.join(d, name) for d in dirs), pid, camid))
    require_nonempty(samples, split, folder, len(names), "identity -1 is junk" + (
        "" if keep_distractors else ", identity 0 distractors are kept only in the gallery"))
    return samples


@register_dataset
class Market1501MM(ReIDDataset):
    name = "Market1501-MM"
    folders = ("Market1501-MM", "Market-1501-RGBNT", "market1501_to_RGBNT201_dark")
    sizes = BenchmarkSizes(train_ids=751, cameras=6, query=3368, gallery=15913)
    max_cameras = 6
    synthetic_specials = True

    def __init__(self, root, test_only=False, skip_unpaired=False):
        base = self.folder(root)
        read = lambda split: read_market_split(os.path.join(base, _SPLITS[split]), split, skip_unpaired,  # noqa: E731
                                               keep_distractors=split == "gallery")
        super().__init__(*read_splits(read, test_only))

    @classmethod
    def write_synthetic_sample(cls, base, split, sample_id, camid, index, images):
        pid = f"{sample_id:04d}" if sample_id >= 0 else str(sample_id)  # junk images are named '-1_...'
        name = f"{pid}_c{camid + 1}s1_{25 * index:06d}_00.jpg"
        save_modalities(os.path.join(base, _SPLITS[split]), _SUBDIRS, name, images)
