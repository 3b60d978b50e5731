import os

from utils import comm

from .bases import MODALITIES, DatasetError, ReIDDataset, Sample
from .msvr310 import MSVR310
from .rgbnt100 import RGBNT100
from .rgbnt201 import RGBNT201
from .synthetic import synthetic_root, write_synthetic

_FACTORY = {"RGBNT201": RGBNT201, "RGBNT100": RGBNT100, "MSVR310": MSVR310}


def uses_scenes(name):
    """Whether benchmark ``name`` removes same-identity gallery samples by scene (MSVR310), not by camera."""
    return name == "MSVR310"


def build_dataset(cfg):
    """Parse the benchmark named by ``DATASETS.NAMES`` under ``DATASETS.ROOT_DIR``.

    'Synthetic' writes (on first use) and reads a generated benchmark in the RGBNT201 layout.
    """
    name, root = cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR
    if name == "Synthetic":
        s = cfg.DATASETS.SYNTHETIC
        params = dict(num_train_ids=s.NUM_TRAIN_IDS, num_test_ids=s.NUM_TEST_IDS, images_per_id=s.IMAGES_PER_ID,
                      num_cameras=s.NUM_CAMERAS, size=tuple(s.SIZE), seed=s.SEED)
        folder = synthetic_root(root, params)
        if comm.is_main_process():
            write_synthetic(folder, "RGBNT201", **params)
        comm.synchronize()
        ds = RGBNT201(folder)
        ds.name = "Synthetic"
        return ds
    if not os.path.isdir(os.path.join(root, name)):
        raise DatasetError(f"dataset {name} not found: expected the folder {os.path.join(root, name)} "
                           f"(set DATASETS.ROOT_DIR to the folder that contains {name}/)")
    return _FACTORY[name](root)


__all__ = ["MODALITIES", "DatasetError", "ReIDDataset", "Sample", "build_dataset", "write_synthetic",
           "RGBNT201", "RGBNT100", "MSVR310", "uses_scenes"]
