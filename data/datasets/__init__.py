import os

from utils import comm

from .bases import MODALITIES, DatasetError, ReIDDataset, Sample
from .custom import CustomDataset
from .market1501mm import Market1501MM
from .msvr310 import MSVR310
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201
from .synthetic import synthetic_root, write_synthetic
from .wmveid863 import WMVeID863

_FACTORY = {"RGBNT201": RGBNT201, "RGBNT100": RGBNT100, "MSVR310": MSVR310}
# Names accepted by DATASETS.NAMES for the same data.
ALIASES = {"MSVWild863": "WMVeID863"}


def uses_scenes(cfg):
    """Whether the evaluation removes same-identity gallery samples by scene (MSVR310, or a custom dataset
    with DATASETS.CUSTOM.PROTOCOL scene) rather than by camera."""
    name = ALIASES.get(cfg.DATASETS.NAMES, cfg.DATASETS.NAMES)
    return name == "MSVR310" or (name == "Custom" and cfg.DATASETS.CUSTOM.PROTOCOL == "scene")


def build_dataset(cfg, test_only=False):
    """Parse the benchmark named by ``DATASETS.NAMES`` under ``DATASETS.ROOT_DIR``; ``test_only`` skips the
    training split (evaluation needs neither its files nor its identity count).

    'Synthetic' writes (on first use) and reads a generated benchmark in the RGBNT201 layout; 'Custom' reads
    the layout described by ``DATASETS.CUSTOM``.
    """
    name, root = ALIASES.get(cfg.DATASETS.NAMES, cfg.DATASETS.NAMES), cfg.DATASETS.ROOT_DIR
    skip = cfg.DATASETS.SKIP_UNPAIRED
    if name == "Synthetic":
        s = cfg.DATASETS.SYNTHETIC
        params = dict(num_train_ids=s.NUM_TRAIN_IDS, num_test_ids=s.NUM_TEST_IDS, images_per_id=s.IMAGES_PER_ID,
                      num_cameras=s.NUM_CAMERAS, size=tuple(s.SIZE), seed=s.SEED)
        folder = synthetic_root(root, params)
        with comm.same_outcome():  # rank 0 writes; the others wait for it (and fail with it)
            if comm.is_main_process():
                write_synthetic(folder, "RGBNT201", **params)
        ds = RGBNT201(folder, test_only=test_only, skip_unpaired=skip)
        ds.name = "Synthetic"
        return ds
    if name == "WMVeID863":
        return WMVeID863(root, skip, test_only)
    if name == "Market1501-MM":
        return Market1501MM(root, skip, test_only)
    if name == "Custom":
        return CustomDataset(root, cfg.DATASETS.CUSTOM, skip, test_only)
    if not os.path.isdir(os.path.join(root, name)):
        raise DatasetError(f"dataset {name} not found: expected the folder {os.path.join(root, name)} "
                           f"(set DATASETS.ROOT_DIR to the folder that contains {name}/)")
    if name == "RGBNT100":  # tiled: one file per sample, nothing to pair
        return RGBNT100(root, test_only=test_only)
    return _FACTORY[name](root, test_only=test_only, skip_unpaired=skip)


__all__ = ["MODALITIES", "DatasetError", "ReIDDataset", "Sample", "build_dataset", "write_synthetic",
           "RGBNT201", "RGBNT100", "MSVR310", "WMVeID863", "Market1501MM", "CustomDataset", "uses_scenes"]
