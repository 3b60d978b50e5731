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
    ``write_synthetic_sample(cls, base, split, sample_id, camid, index, images)``, optional, writes one
    rendered sample in the layout ``from_config`` reads, for ``data.datasets.write_synthetic``.
"""
_REGISTRY = {}
_ALIASES = {}


def register_dataset(cls):
    """Class decorator: register ``cls`` under ``cls.name`` and each of ``cls.aliases``."""
    for key in (cls.name, *cls.aliases):
        owner = _ALIASES.get(key)
        if owner is not None and owner != cls.name:
            raise ValueError(f"dataset name {key!r} is already registered (by {owner})")
        _ALIASES[key] = cls.name
    _REGISTRY[cls.name] = cls
    return cls


def dataset_names(aliases=True):
    """Every name DATASETS.NAMES accepts (with the aliases) or one per dataset (``aliases=False``)."""
    return tuple(_ALIASES) if aliases else tuple(_REGISTRY)


def get_dataset(name):
    """The registered class of dataset ``name`` (or one of its aliases)."""
    if name not in _ALIASES:
        raise ValueError(f"config: DATASETS.NAMES must be one of {list(dataset_names())}, got {name!r}")
    return _REGISTRY[_ALIASES[name]]


def dataset_of(cfg):
    """The registered class of the dataset ``cfg.DATASETS.NAMES`` names."""
    return get_dataset(cfg.DATASETS.NAMES)


def reference_sizes(cfg):
    """``(sizes, name)``: the released sizes of the benchmark ``cfg`` names or, for one without published
    sizes (a custom dataset), those of the default benchmark (config/defaults.py), with whose they are."""
    cls = dataset_of(cfg)
    if cls.sizes is None:
        from config.defaults import _C
        cls = get_dataset(_C.DATASETS.NAMES)
    return cls.sizes, cls.name
