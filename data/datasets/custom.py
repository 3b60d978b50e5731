"""Any multi-modal (or single-modal) ReID dataset described in the config, no code: ``DATASETS.NAMES
Custom`` with the ``DATASETS.CUSTOM`` keys (config/defaults.py, docs/data.md "Your own data").

Layouts: ``<FOLDER>/<split>/<modality folder>/NAME`` or, with ``ID_FOLDERS``,
``<FOLDER>/<split>/<id>/<modality folder>/NAME``; with ``TILED`` each file holds the three modalities side by
side in ``TILE_ORDER`` (no modality folders). File names are parsed with ``PATTERN``, a regular expression
with named groups ``id`` (or the id folder), ``camera`` and optionally ``scene``. ``MODALITY_FOLDERS`` names
the folder of RGB, NI and TI; naming one folder several times duplicates that modality (RGB-only data run
as RGB three times). Samples are paired across modality folders by file name.
"""
import os
import re

from utils.modalities import check_modalities

from .bases import (DatasetError, ReIDDataset, Sample, is_hidden, list_images, pair_by_name,
                    report_unpaired, require_dir, require_nonempty)
from .registry import register_dataset


def compile_pattern(pattern):
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"DATASETS.CUSTOM.PATTERN {pattern!r} is not a regular expression: {e}") from None
    if "camera" not in rx.groupindex:
        raise DatasetError(f"DATASETS.CUSTOM.PATTERN {pattern!r} needs a named group (?P<camera>...)")
    return rx


@register_dataset
class CustomDataset(ReIDDataset):
    name = "Custom"

    @classmethod
    def from_config(cls, cfg, test_only=False):
        return cls(cfg.DATASETS.ROOT_DIR, cfg.DATASETS.CUSTOM, cfg.DATASETS.SKIP_UNPAIRED, test_only)

    @classmethod
    def protocol_for(cls, cfg):
        return cfg.DATASETS.CUSTOM.PROTOCOL

    @classmethod
    def modalities_for(cls, cfg):
        return tuple(cfg.DATASETS.CUSTOM.MODALITIES)

    @classmethod
    def check_config(cls, cfg):
        c = cfg.DATASETS.CUSTOM
        if not c.FOLDER:
            raise ValueError("config: DATASETS.NAMES Custom needs DATASETS.CUSTOM.FOLDER (the dataset folder under "
                             "DATASETS.ROOT_DIR)")
        mods = check_modalities(c.MODALITIES, "config: DATASETS.CUSTOM.MODALITIES")
        if len(c.MODALITY_FOLDERS) != len(mods) or not all(isinstance(f, str) and f for f in c.MODALITY_FOLDERS):
            raise ValueError(f"config: DATASETS.CUSTOM.MODALITY_FOLDERS must name {len(mods)} folders, one for each "
                             f"of DATASETS.CUSTOM.MODALITIES {list(mods)} (repeat one to duplicate a modality), got "
                             f"{list(c.MODALITY_FOLDERS)}")
        if c.TILED and sorted(c.TILE_ORDER) != sorted(mods):
            raise ValueError(f"config: DATASETS.CUSTOM.TILE_ORDER must order the modalities {list(mods)} "
                             f"(DATASETS.CUSTOM.MODALITIES) as they stand side by side in a file, got "
                             f"{list(c.TILE_ORDER)}")

    def __init__(self, root, c, skip_unpaired=False, test_only=False):
        self.c = c
        self.rx = compile_pattern(c.PATTERN)
        if not c.ID_FOLDERS and "id" not in self.rx.groupindex:
            raise DatasetError(f"DATASETS.CUSTOM.PATTERN {c.PATTERN!r} needs a named group (?P<id>...) unless "
                               f"DATASETS.CUSTOM.ID_FOLDERS is yes")
        bad = [x for x in c.IGNORE_IDS if not isinstance(x, int) or isinstance(x, bool)]
        if bad:
            raise DatasetError(f"DATASETS.CUSTOM.IGNORE_IDS must list integer identities (as parsed from the names), "
                               f"got {bad!r}: write them without quotes, e.g. [-1, 0]")
        if c.PROTOCOL == "scene" and "scene" not in self.rx.groupindex:
            raise DatasetError("DATASETS.CUSTOM.PROTOCOL scene needs a named group (?P<scene>...) in "
                               "DATASETS.CUSTOM.PATTERN")
        self.modalities = tuple(c.MODALITIES)
        self.tiled = bool(c.TILED)
        self.tile_order = tuple(c.TILE_ORDER) if self.tiled else self.modalities
        self.protocol = c.PROTOCOL
        base = os.path.join(root, c.FOLDER)
        require_dir(base, "DATASETS.CUSTOM.FOLDER")
        self.skip_unpaired = skip_unpaired
        train = [] if test_only else self.read(os.path.join(base, c.TRAIN), "train")
        query = self.read(os.path.join(base, c.QUERY), "query")
        self.gallery_is_query = c.GALLERY == c.QUERY
        gallery = query if self.gallery_is_query else self.read(os.path.join(base, c.GALLERY), "gallery")
        super().__init__(train, query, gallery)

    def parse(self, path, folder_id=None):
        m = self.rx.search(os.path.basename(path))
        if not m:
            raise DatasetError(f"cannot parse file name {path} with DATASETS.CUSTOM.PATTERN {self.c.PATTERN!r}")
        groups = m.groupdict()
        name = os.path.basename(path)
        for g in ("id", "camera"):  # a number cut out of a longer one ('-1_c1' read as id 1, 'c12' as camera 1)
            if groups.get(g) is None:
                continue
            lo, hi = m.span(g)
            before, after = name[lo - 1:lo] if lo > 0 else "", name[hi:hi + 1]
            sign = before == "-" and (lo == 1 or not name[lo - 2].isdigit())  # '-1_c1', not the '-' of '3-1'
            if before.isdigit() or (sign and not groups[g].startswith("-")) or after.isdigit():
                raise DatasetError(f"{path}: DATASETS.CUSTOM.PATTERN {self.c.PATTERN!r} reads {g} {groups[g]!r} "
                                   f"out of the middle of a number in the name (next to {before or after!r}); "
                                   f"anchor the pattern (^...) and let the group take the whole number "
                                   f"(and its sign: -?\\d+)")
        try:
            pid = int(groups["id"]) if groups.get("id") is not None else int(folder_id)
            cam = int(groups["camera"]) - self.c.CAMERA_BASE
            scene = int(groups["scene"]) if groups.get("scene") is not None else 0
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: id, camera and scene must be integers (groups {groups}, "
                               f"id folder {folder_id!r})") from None
        if cam < 0:
            raise DatasetError(f"{path}: camera {cam + self.c.CAMERA_BASE} is below DATASETS.CUSTOM.CAMERA_BASE "
                               f"{self.c.CAMERA_BASE}")
        return pid, cam, scene

    def check_layout(self, folder):
        """The split folder ``folder`` must look like the layout the keys describe: refuse, naming the key,
        a TILED / ID_FOLDERS setting that contradicts what is on disk."""
        c = self.c
        subdirs = sorted(d for d in os.listdir(folder) if not is_hidden(d) and os.path.isdir(os.path.join(folder, d)))
        images = list_images(folder)
        modality_dirs = [d for d in subdirs if d in set(c.MODALITY_FOLDERS)]
        if c.ID_FOLDERS:
            if modality_dirs and not images:
                raise DatasetError(f"DATASETS.CUSTOM.ID_FOLDERS yes expects <split>/<id>/<files>, but {folder} "
                                   f"holds the modality folders {', '.join(modality_dirs)} directly: set "
                                   f"DATASETS.CUSTOM.ID_FOLDERS no")
            return
        if self.tiled and not images and subdirs:
            raise DatasetError(f"DATASETS.CUSTOM.TILED yes expects image files directly in {folder} (each holding "
                               f"the modalities side by side), but it holds only folders ({', '.join(subdirs[:5])}"
                               f"{', ...' if len(subdirs) > 5 else ''}): set DATASETS.CUSTOM.TILED no for one "
                               f"folder per modality" + (", DATASETS.CUSTOM.ID_FOLDERS yes for one per identity"
                                                        if not modality_dirs else ""))
        if not self.tiled and not modality_dirs:
            if images:
                raise DatasetError(f"{folder} holds {len(images)} images directly and none of the modality folders "
                                   f"{list(c.MODALITY_FOLDERS)} (DATASETS.CUSTOM.MODALITY_FOLDERS): set "
                                   f"DATASETS.CUSTOM.TILED yes if each image holds the modalities side by side")
            if subdirs:
                raise DatasetError(f"{folder} holds the folders {', '.join(subdirs[:5])}"
                                   f"{', ...' if len(subdirs) > 5 else ''} but none of the modality folders "
                                   f"{list(c.MODALITY_FOLDERS)} (DATASETS.CUSTOM.MODALITY_FOLDERS): set "
                                   f"DATASETS.CUSTOM.ID_FOLDERS yes if they are identity folders")

    def read_files(self, folder, folder_id=None):
        """(samples, files without partners) of one folder of files (a split, or an identity folder)."""
        if self.tiled:
            return [Sample((os.path.join(folder, n),) * len(self.modalities),
                           *self.parse(os.path.join(folder, n), folder_id))
                    for n in list_images(folder)], []
        dirs = [os.path.join(folder, m) for m in self.c.MODALITY_FOLDERS]
        names, unpaired = pair_by_name(dirs, list(self.c.MODALITY_FOLDERS), "DATASETS.CUSTOM.MODALITY_FOLDERS folder")
        return [Sample(tuple(os.path.join(d, n) for d in dirs), *self.parse(os.path.join(dirs[0], n), folder_id))
                for n in names], unpaired

    def read(self, folder, split):
        require_dir(folder, f"{split} split (DATASETS.CUSTOM.{split.upper()})")
        self.check_layout(folder)
        if self.c.ID_FOLDERS:
            parts = [self.read_files(os.path.join(folder, sub), sub) for sub in sorted(os.listdir(folder))
                     if not is_hidden(sub) and os.path.isdir(os.path.join(folder, sub))]
        else:
            parts = [self.read_files(folder)]
        samples = [x for smp, _ in parts for x in smp]
        unpaired = [x for _, lonely in parts for x in lonely]
        report_unpaired(unpaired, split, self.skip_unpaired)
        ignore = set(self.c.IGNORE_IDS)
        found = len(samples)
        samples = [s for s in samples if s.pid not in ignore]
        require_nonempty(samples, split, folder, found, f"DATASETS.CUSTOM.IGNORE_IDS {sorted(ignore)}")
        return samples
