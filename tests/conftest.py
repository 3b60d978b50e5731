import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)

from config import load_config  # noqa: E402

TINY = ["MODEL.TRANSFORMER_TYPE", "vit_custom", "MODEL.CUSTOM_VIT.EMBED_DIM", "32", "MODEL.CUSTOM_VIT.DEPTH", "2",
        "MODEL.CUSTOM_VIT.NUM_HEADS", "2", "MODEL.CUSTOM_VIT.OUT_DIM", "16", "MODEL.CUSTOM_VIT.PATCH_SIZE", "8",
        "MODEL.TOPK", "4", "MODEL.SIM_HEADS", "2", "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]",
        "INPUT.PADDING", "2", "DATASETS.NAMES", "Synthetic", "DATASETS.SYNTHETIC.NUM_TRAIN_IDS", "6",
        "DATASETS.SYNTHETIC.NUM_TEST_IDS", "4", "DATASETS.SYNTHETIC.IMAGES_PER_ID", "4",
        "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.NUM_WORKERS", "0",
        "TEST.IMS_PER_BATCH", "16", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def tiny_cfg(synth_root):
    def make(*opts, freeze=True):
        return load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root] + list(opts), freeze=freeze)
    return make


def images(b=4, h=64, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, 3, h, w, generator=g) for m in ("RGB", "NI", "TI")}
