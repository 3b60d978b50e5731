"""The benchmarks, each registered once under its name (``registry.py``); a new layout is one module
here plus its import below (docs/extending.md)."""
from .bases import MODALITIES, BenchmarkSizes, DatasetError, ReIDDataset, Sample
from .registry import (dataset_names, dataset_of, evaluation_reference, get_dataset, reference_sizes,
                       register_dataset)
# Registered in this order (the order error messages list them in).
from .rgbnt201 import RGBNT201  # noqa: I001
from .rgbnt100 import RGBNT100
from .msvr310 import MSVR310
from .wmveid863 import WMVeID863
from .market1501mm import Market1501MM
from .synthetic import Synthetic, synthetic_layouts, write_synthetic
from .custom import CustomDataset


def build_dataset(cfg, test_only=False):
    """Parse the benchmark named by ``DATASETS.NAMES`` under ``DATASETS.ROOT_DIR``; ``test_only`` skips the
    training split (evaluation needs neither its files nor its identity count)."""
    return dataset_of(cfg).from_config(cfg, test_only=test_only)


__all__ = ["MODALITIES", "BenchmarkSizes", "DatasetError", "ReIDDataset", "Sample", "build_dataset", "write_synthetic",
           "synthetic_layouts", "register_dataset", "get_dataset", "dataset_of", "dataset_names", "reference_sizes", "evaluation_reference", "RGBNT201",
           "RGBNT100", "MSVR310", "WMVeID863", "Market1501MM", "CustomDataset", "Synthetic"]
