"""Dataset records and the checks every parser shares.

A sample is ``Sample(paths, pid, camid, sceneid)``: ``paths`` holds one file per modality of the dataset
(``ReIDDataset.modalities``: RGB, NI, TI unless it declares others) or, for datasets that store the modalities
side by side in one image, the same file once per modality with ``tiled=True`` on the dataset.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from utils.errors import SignalError

from utils.modalities import MODALITIES  # noqa: F401 (re-exported)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Sample:
    paths: Tuple[str, ...]
    pid: int
    camid: int
    sceneid: int = 0


@dataclass(frozen=True)
class BenchmarkSizes:
    """Sizes of a released benchmark (the tools size their figures with them)."""
    train_ids: int
    cameras: int
    query: int
    gallery: int


class DatasetError(SignalError):
    """Bad data on disk: a missing folder or file, a name that does not parse, an empty split."""


def is_hidden(name):
    """Hidden entries (``.DS_Store``, macOS ``._*`` resource forks, ``.ipynb_checkpoints``) are not data."""
    return name.startswith(".")


def list_images(folder):
    """Sorted image file names in ``folder``, hidden files skipped; a missing folder is a DatasetError."""
    if not os.path.isdir(folder):
        raise DatasetError(f"missing folder: {folder}")
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and not is_hidden(f))


def require_dir(path, what):
    if not os.path.isdir(path):
        raise DatasetError(f"missing {what} folder: {path}")


def require_file(path, what):
    if not os.path.isfile(path):
        raise DatasetError(f"missing {what} file: {path} (every sample needs an image of each modality)")


def require_nonempty(samples, split, folder, left_out=0, why=""):
    """An empty split is an error; ``left_out`` images were found but not kept, for the reason ``why``."""
    if not samples and left_out:
        raise DatasetError(f"empty split '{split}': all {left_out} images under {folder} were left out ({why})")
    if not samples:
        raise DatasetError(f"empty split '{split}': no images found under {folder}")


def relabel(samples: List[Sample]) -> List[Sample]:
    """Map identities to 0..N-1 in sorted order of the original ids (deterministic)."""
    pids = sorted({s.pid for s in samples})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [Sample(s.paths, mapping[s.pid], s.camid, s.sceneid) for s in samples]


class ReIDDataset:
    """Train / query / gallery sample lists of one benchmark; the class also carries the benchmark's facts
    (its spec, read through ``data.datasets.registry``).

    Attributes:
        train, query, gallery: lists of ``Sample``; train identities are relabelled to 0..N-1.
        name, aliases: the names DATASETS.NAMES accepts for it.
        folders: folder names under DATASETS.ROOT_DIR it is released under (default: its name).
        protocol: which gallery samples of the query's identity the evaluation removes: same 'camera' or
            same 'scene' (MSVR310).
        gallery_is_query: the benchmark evaluates with query = gallery (RGBNT201).
        modalities: the modality names of a sample, in batch order (``modalities_for`` when a config chooses).
        tiled: each file holds the modalities side by side (RGBNT100), in ``tile_order``.
        sizes: ``BenchmarkSizes`` of the released benchmark, None where not published.
        max_cameras: the most cameras its file names can hold (None: no limit).
        synthetic_specials: its synthetic copy adds a junk (-1) and a distractor (0) gallery image.
        in_paper: one of the Signal paper's benchmarks.
    """

    name = "base"
    aliases: Tuple[str, ...] = ()
    folders: Optional[Tuple[str, ...]] = None
    protocol = "camera"
    gallery_is_query = False
    modalities = MODALITIES
    tiled = False
    tile_order = MODALITIES
    sizes: Optional[BenchmarkSizes] = None
    max_cameras: Optional[int] = None
    synthetic_specials = False
    in_paper = False
    # Writer of one sample of the synthetic copy (a classmethod in datasets that have one):
    # write_synthetic_sample(base, split, sample_id, camid, index, images) with split 'train', 'query' or
    # 'gallery', the on-disk identity ``sample_id``, and ``images`` the (RGB, NI, TI) uint8 arrays.
    write_synthetic_sample = None

    def __init__(self, train, query, gallery):
        n = len(self.modalities)
        for split, samples in (("train", train), ("query", query), ("gallery", gallery)):
            bad = next((smp for smp in samples if len(smp.paths) != n), None)
            if bad is not None:
                raise DatasetError(f"{self.name} {split} sample {bad.paths[0]} has {len(bad.paths)} files, expected "
                                   f"one per modality ({', '.join(self.modalities)})")
        self.train = relabel(train)
        self.query = query
        self.gallery = gallery

    @classmethod
    def from_config(cls, cfg, test_only=False):
        """Parse the dataset under DATASETS.ROOT_DIR; ``test_only`` skips the training split."""
        return cls(cfg.DATASETS.ROOT_DIR, test_only=test_only, skip_unpaired=cfg.DATASETS.SKIP_UNPAIRED)

    @classmethod
    def check_config(cls, cfg):
        """Refuse (ValueError naming the key) a config this dataset cannot be read with; run at freeze."""

    @classmethod
    def modalities_for(cls, cfg):
        """The modality names of this dataset under ``cfg``, in batch order (class attribute ``modalities``
        unless a config key chooses them)."""
        return tuple(cls.modalities)

    @classmethod
    def protocol_for(cls, cfg):
        """'camera' or 'scene': the evaluation protocol of this dataset under ``cfg``."""
        return cls.protocol

    @classmethod
    def folder(cls, root):
        """The dataset's folder under ``root``: the first of ``folders`` present."""
        return find_dataset_folder(root, cls.folders or (cls.name,), cls.name)

    @property
    def num_train_pids(self):
        return len({s.pid for s in self.train})

    @property
    def num_cameras(self):
        return 1 + max(s.camid for s in self.train + self.query + self.gallery)

    @property
    def uses_scenes(self):
        return self.protocol == "scene"

    def summary(self):
        rows = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        lines = [f"Dataset {self.name}:", "  subset   | # ids | # samples | # cameras",
                 "  ---------|-------|-----------|----------"]
        for split, samples in rows:
            lines.append(f"  {split:<8} | {len({s.pid for s in samples}):5d} | {len(samples):9d} | "
                         f"{len({s.camid for s in samples}):9d}")
        return "\n".join(lines)


def find_dataset_folder(root, candidates, name):
    """The first of ``candidates`` (folder names a benchmark is released under) present in ``root``."""
    for c in candidates:
        if os.path.isdir(os.path.join(root, c)):
            return os.path.join(root, c)
    if len(candidates) == 1:
        raise DatasetError(f"dataset {name} not found: expected the folder {os.path.join(root, candidates[0])} "
                           f"(set DATASETS.ROOT_DIR to the folder that contains {candidates[0]}/)")
    raise DatasetError(f"dataset {name} not found: expected one of the folders "
                       f"{', '.join(os.path.join(root, c) for c in candidates)} (set DATASETS.ROOT_DIR to the "
                       f"folder that contains it)")


def read_splits(read, test_only=False):
    """``(train, query, gallery)`` = ``read(split)`` of each split; no training samples with ``test_only``."""
    return ([] if test_only else read("train")), read("query"), read("gallery")


def save_modalities(folder, subdirs, name, images):
    """Write a sample's ``images`` (one per modality) as ``folder/<subdir>/name``, one modality folder each."""
    for sub, arr in zip(subdirs, images):
        save_image(arr, os.path.join(folder, sub, name))


def save_image(arr, path):
    """Write a uint8 [H, W, 3] array as an image file (JPEG at quality 95 for .jpg), creating its folder."""
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


def pair_by_name(folders, labels, what="modality"):
    """Pair the files of modality ``folders`` (one per modality; a folder may repeat to duplicate a
    modality) by file name; a missing folder is a DatasetError naming it and ``what`` it is. Returns (names
    present in every folder, [(path, [labels it lacks])])."""
    for f, label in dict.fromkeys(zip(folders, labels)):
        require_dir(f, f"{what} ({label})")
    listing = {f: set(list_images(f)) for f in dict.fromkeys(folders)}
    every = set.intersection(*listing.values())
    unpaired = []
    for f, label in dict.fromkeys(zip(folders, labels)):
        for name in sorted(listing[f] - every):
            unpaired.append((os.path.join(f, name),
                             [lab for g, lab in zip(folders, labels) if name not in listing[g]]))
    return sorted(every), unpaired


_SHOWN = 20  # partnerless files an error lists before "... and N more"


def report_unpaired(unpaired, split, skip, logger=None):
    """A file without partners in the other modality folders is an error listing every such file, or, with
    ``skip`` (DATASETS.SKIP_UNPAIRED), a warning listing each."""
    if not unpaired:
        return
    lines = [f"  {path} (no file of that name in: {', '.join(missing)})" for path, missing in unpaired]
    if not skip:
        shown = lines if len(lines) <= _SHOWN else lines[:_SHOWN] + [f"  ... and {len(lines) - _SHOWN} more"]
        raise DatasetError(f"split '{split}': {len(unpaired)} files have no partner in every modality folder; "
                           f"samples are paired by file name. Fix the data, or set DATASETS.SKIP_UNPAIRED yes "
                           f"to leave them out (the log then lists each):\n" + "\n".join(shown))
    import logging
    (logger or logging.getLogger("signal.data")).warning(
        "split '%s': leaving out %d files without partners in every modality folder "
        "(DATASETS.SKIP_UNPAIRED):\n%s", split, len(unpaired), "\n".join(lines))
