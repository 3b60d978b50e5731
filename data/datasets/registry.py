"""The datasets ``DATASETS.NAMES`` can name, registered once each.

A dataset is a ``ReIDDataset`` subclass decorated with ``@register_dataset``. The class is its own spec:
its name and aliases, the folder names it is released under, its evaluation protocol (which same-identity
gallery samples are removed: same 'camera' or same 'scene'), whether the gallery is the query set, the
reference sizes of the released benchmark, its parser (``from_config``) and the writer of its synthetic
copy (``write_synthetic_sample``). Evaluation, the config checks and the tools ask the registry rather than
keeping their own lists of names.

Contract of a registered class (see ``bases.ReIDDataset`` and docs/extending.md):
    ``from_config(cls, cfg, test_only)`` -> an instance holding train / query / gallery samples;
    ``protocol_for(cls, cfg)`` -> 'camera' or 'scene' (class attribute ``protocol`` unless overridden);
    ``check_config(cls, cfg)`` refuses, at freeze, a config the dataset cannot be read with;
    ``write_synthetic_sample(cls, base, split, sample_id, camid, index, images)``, optional, writes one
    rendered sample in the layout ``from_config`` reads, for ``data.datasets.write_synthetic``.
"""
from utils.registry import Registry

_DATASETS = Registry("dataset")


def register_dataset(cls):
    """Class decorator: register ``cls`` under ``cls.name`` and each of ``cls.aliases``."""
    return _DATASETS.register(cls.name, cls, cls.__module__, cls.aliases)


# The benchmark a config trains on unless DATASETS.NAMES says otherwise (config/defaults.py reads it here), and
# whose released sizes stand in for a dataset without published ones.
DEFAULT_DATASET = "RGBNT201"


def dataset_names(aliases=True):
    """Every name DATASETS.NAMES accepts (with the aliases) or one per dataset (``aliases=False``)."""
    return _DATASETS.names(aliases)


def get_dataset(name):
    """The registered class of dataset ``name`` (or one of its aliases)."""
    cls = _DATASETS.get(name)
    if cls is None:
        raise ValueError(f"config: DATASETS.NAMES must be one of {list(dataset_names())}, got {name!r}")
    return cls


def dataset_of(cfg):
    """The registered class of the dataset ``cfg.DATASETS.NAMES`` names."""
    return get_dataset(cfg.DATASETS.NAMES)


def reference_sizes(cfg):
    """``(sizes, name)``: the released sizes of the benchmark ``cfg`` names or, for one without published
    sizes (a custom dataset, WMVeID863), those of the default benchmark (``DEFAULT_DATASET``); ``name`` is the
    benchmark the sizes belong to."""
    cls = dataset_of(cfg)
    if cls.sizes is None:
        cls = get_dataset(DEFAULT_DATASET)
    return cls.sizes, cls.name


def evaluation_reference():
    """The Signal paper's benchmark with the largest test split (RGBNT100: 1,715 queries x 8,575 gallery):
    the default size of the evaluation and re-ranking benchmarks."""
    paper = [get_dataset(n) for n in dataset_names(aliases=False) if get_dataset(n).in_paper]
    return max(paper, key=lambda cls: cls.sizes.query * cls.sizes.gallery)
