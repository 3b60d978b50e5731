"""RGBNT201 (Zheng et al., AAAI 2021): 201 people seen by RGB, near-infrared and thermal cameras.

Layout: ``RGBNT201/{train_171,test}/{RGB,NI,TI}/NAME.jpg``; the same NAME in the three folders is one
sample (paired by name across all three folders; a file without partners is reported by name).
``000123_cam2_....jpg``: id = first six digits, camera = the digit after ``cam`` (1-based).
Evaluation uses query = gallery = the test folder.
"""
import os
import re

from .bases import (BenchmarkSizes, DatasetError, MODALITIES, ReIDDataset, Sample, pair_by_name, report_unpaired,
                   require_nonempty, save_modalities)
from .registry import register_dataset

_NAME = re.compile(r"^(\d{6})_cam(\d+)")
_SPLITS = {"train": "train_171", "query": "test", "gallery": "test"}


def parse_rgbnt201_name(path):
    name = os.path.basename(path)
    m = _NAME.match(name)
    if not m or int(m.group(2)) < 1:
        raise DatasetError(f"cannot parse file name {path}: expected '<6-digit id>_cam<N>_...' with N >= 1")
    return int(m.group(1)), int(m.group(2)) - 1


def read_modality_folders(folder, split, skip_unpaired=False, modalities=MODALITIES):
    """Samples of a folder holding one sub-folder per modality (RGB/NI/TI), paired by file name across them;
    a file missing from any of them is reported by name (an error, or a warning with ``skip_unpaired``)."""
    dirs = [os.path.join(folder, m) for m in modalities]
    names, unpaired = pair_by_name(dirs, list(modalities))
    report_unpaired(unpaired, split, skip_unpaired)
    samples = []
    for name in names:
        paths = tuple(os.path.join(d, name) for d in dirs)
        pid, camid = parse_rgbnt201_name(paths[0])
        samples.append(Sample(paths, pid, camid))
    require_nonempty(samples, split, folder)
    return samples


@register_dataset
class RGBNT201(ReIDDataset):
    name = "RGBNT201"
    gallery_is_query = True
    sizes = BenchmarkSizes(train_ids=171, cameras=4, query=836, gallery=836)
    in_paper = True

    def __init__(self, root, test_only=False, skip_unpaired=False, modalities=None):
        """``modalities``: the modality folders to read (default all three, in the order RGB, NI, TI)."""
        if modalities is not None:
            self.modalities = tuple(modalities)
        base = self.folder(root)
        train = [] if test_only else read_modality_folders(os.path.join(base, _SPLITS["train"]), "train",
                                                           skip_unpaired, self.modalities)
        test = read_modality_folders(os.path.join(base, _SPLITS["query"]), "test", skip_unpaired, self.modalities)
        super().__init__(train, test, test)

    @classmethod
    def write_synthetic_sample(cls, base, split, sample_id, camid, index, images):
        name = f"{sample_id:06d}_cam{camid + 1}_{index:02d}.jpg"
        save_modalities(os.path.join(base, _SPLITS[split]), MODALITIES, name, images)
