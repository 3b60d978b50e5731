"""Build the resolved configuration: defaults <- YAML file <- command-line ``KEY VALUE`` pairs."""
import ast
import os
import re

import yaml
from yacs.config import CfgNode as CN

from utils.keyfacts import AliasNode, alias_target, key_table
from utils.mapping import flatten  # noqa: F401 (re-exported)

from .defaults import KEYS

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0", "none", ""}

class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"{key!r} is given twice in one section (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); YAML would keep only the last and drop "
                                    f"the first silently: merge them into one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(ValueError):
    pass


def _coerce(key, value, default, source, path=False):
    """Convert ``value`` to the type of ``default`` or raise a ValueError naming key and source."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"{source}: {key} expects yes/no (a boolean), got {value!r}")
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{source}: {key} expects a {type(default).__name__}, got {value!r}") from None
    if isinstance(default, (list, tuple)):
        if isinstance(value, (int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: {key} expects a list, got {value!r}")
        return list(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, str):
        if value is None:
            return ""
        if key in ("TEST.MISS", "TEST.MISS_QUERY", "TEST.MISS_GALLERY") and str(value).lower() in ("none", "nothing"):
            return ""
        return os.path.expanduser(str(value)) if path else str(value)  # '~' as a shell would
    if type(value) is not type(default):
        raise ValueError(f"{source}: {key} expects a {type(default).__name__}, got {value!r}")
    return value


def _is_path(root, key):
    k = key_table(root).keys.get(key)
    return k is not None and k.facts.path


def _merge(cfg, updates, source, root, prefix="", given=None):
    given = {} if given is None else given  # keys this file sets, by their own names: a key and its alias
    for name, value in updates.items():
        key, node, leaf = prefix + name, cfg, name
        if name not in cfg:
            target = alias_target(cfg, name)
            if target is None:
                raise KeyError(f"{source}: unknown config key {key!r}")
            node, leaf = target
        own = key_table(root).canonical(key)
        if own in given:
            raise ValueError(f"{source}: {given[own]} and {key} are the same key ({own}); give it once")
        given[own] = key
        if isinstance(node[leaf], CN):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {key} is a section and expects a mapping, got {value!r}")
            _merge(node[leaf], value, source, root, key + ".", given)
        else:
            node[leaf] = _coerce(key, value, node[leaf], source, _is_path(root, own))


def merge_file(cfg, path, _chain=()):
    """Merge a YAML file into ``cfg``; unknown keys and ill-typed values name the file and key.

    ``_BASE_`` (a path relative to the file, or a list of them merged in order) is merged first; a file
    that inherits from itself, directly or through others, is an error naming the chain."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}" +
                                (f" (the _BASE_ of {_chain[-1]})" if _chain else ""))
    real = os.path.realpath(path)
    if real in (os.path.realpath(p) for p in _chain):
        raise ValueError("config: _BASE_ inheritance loops: " + " -> ".join([*_chain, path]))
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {e.start}): save the config as UTF-8") from None
    except _DuplicateKey as e:
        raise ValueError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    bases = data.pop("_BASE_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ValueError(f"{path}: _BASE_ must be a file path or a list of file paths, got {bases!r}")
    for base in bases:
        merge_file(cfg, os.path.join(os.path.dirname(path), base), (*_chain, path))
    _merge(cfg, data, path, cfg)


def merge_opts(cfg, opts):
    """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` command-line pairs into ``cfg``."""
    if len(opts) % 2:
        raise ValueError(f"command-line overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        own = key_table(cfg).canonical(key)  # an alias (MODEL.TOPK) sets its key (MODEL.SIGNAL.TOPK)
        node = own.split(".")[-1]
        parent = cfg
        for part in own.split(".")[:-1]:
            if part not in parent or not isinstance(parent[part], CN):
                raise KeyError(f"command line: unknown config key {key!r}")
            parent = parent[part]
        if node not in parent or isinstance(parent[node], CN):
            raise KeyError(f"command line: unknown config key {key!r}")
        parent[node] = _coerce(key, value, parent[node], "command line", _is_path(cfg, own))


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg):
    """Every value that would fail (or silently misbehave) later, refused now with the key named."""
    table = key_table(cfg)
    for key, k in table.keys.items():  # the choices and ranges each key declares
        value = _get(cfg, key)
        expected = k.facts.refuses(value)
        if expected:
            raise ValueError(f"config: {table.label(key)} must be {expected}, got {value!r}")
    from data.datasets import get_dataset
    dataset = get_dataset(cfg.DATASETS.NAMES)  # a registered name or alias, else an error listing them
    from modeling.backbone import backbone_spec
    from modeling.methods import method_spec
    method = method_spec(cfg.MODEL.METHOD)  # a registered method, else an error listing them
    spec = backbone_spec(cfg.MODEL.TRANSFORMER_TYPE)  # registered, or a timm ViT / EVA02 name
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.MODEL.DEVICE):
        raise ValueError(f"config: MODEL.DEVICE must be auto, cpu, cuda or cuda:N (an NVIDIA GPU), got "
                         f"{cfg.MODEL.DEVICE!r}")
    if cfg.SOLVER.BACKBONE_LR < 0 and spec.official_lr is None:
        raise ValueError(f"config: SOLVER.BACKBONE_LR must be set for the backbone {cfg.MODEL.TRANSFORMER_TYPE} "
                         f"(an LR, or 0 for BASE_LR x SOLVER.BACKBONE_LR_FACTOR); the official rule covers only "
                         f"the backbones of the official recipe")
    if cfg.SOLVER.BACKBONE_LR not in (-1.0, 0.0) and cfg.SOLVER.BACKBONE_LR < 0:
        raise ValueError(f"config: SOLVER.BACKBONE_LR must be > 0, 0 or -1, got {cfg.SOLVER.BACKBONE_LR}")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST", "DATASETS.SYNTHETIC.SIZE"):
        node = _get(cfg, key)
        if len(node) != 2 or any(not isinstance(v, int) or v <= 0 for v in node):
            raise ValueError(f"config: {key} must be [H, W] with positive integer sizes, got {list(node)}")
    if list(cfg.INPUT.SIZE_TEST) != list(cfg.INPUT.SIZE_TRAIN):
        raise ValueError(
            f"config: INPUT.SIZE_TEST {list(cfg.INPUT.SIZE_TEST)} differs from INPUT.SIZE_TRAIN "
            f"{list(cfg.INPUT.SIZE_TRAIN)}; the position embedding, token selection (MODEL.TOPK) and LAM are "
            f"built for one patch grid, so both must be equal")
    patch = spec.patch_size(cfg.MODEL)
    h, w = cfg.INPUT.SIZE_TRAIN
    if h % patch or w % patch:
        raise ValueError(
            f"config: INPUT.SIZE_TRAIN {[h, w]} is not a multiple of the backbone's patch size {patch} "
            f"(the last {h % patch} rows / {w % patch} columns would be dropped); use e.g. "
            f"{[max(patch, h // patch * patch), max(patch, w // patch * patch)]}")
    for key in ("INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD"):
        values = _get(cfg, key)
        if len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
            raise ValueError(f"config: {key} must hold 3 numbers (one per colour channel), got {list(values)}")
    if any(v <= 0 for v in cfg.INPUT.PIXEL_STD):
        raise ValueError(f"config: INPUT.PIXEL_STD must be > 0 in every channel, got {list(cfg.INPUT.PIXEL_STD)}")
    noise = cfg.SOLVER.LR_NOISE_RANGE
    if len(noise) > 2 or any(not 0 <= v <= 1 for v in noise) or (len(noise) == 2 and noise[0] >= noise[1]):
        raise ValueError(f"config: SOLVER.LR_NOISE_RANGE must be [], [start] or [start, end] with "
                         f"0 <= start < end <= 1 (fractions of SOLVER.MAX_EPOCHS), got {list(noise)}")
    if any(not isinstance(v, int) or v < 1 for v in cfg.SOLVER.STEPS) or list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ValueError(f"config: SOLVER.STEPS must be increasing epochs >= 1, got {list(cfg.SOLVER.STEPS)}")
    if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ValueError(
            f"config: SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
            f"DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE})")
    if cfg.SOLVER.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE < 2:
        raise ValueError(
            f"config: SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {cfg.SOLVER.IMS_PER_BATCH} / "
            f"{cfg.DATALOADER.NUM_INSTANCE} gives fewer than 2 identities per batch; the triplet loss needs "
            f"negatives")
    if not cfg.OUTPUT_DIR:
        raise ValueError("config: OUTPUT_DIR must not be empty")
    dataset.check_config(cfg)
    from utils.modalities import check_modalities, miss_choices
    modalities = check_modalities(dataset.modalities_for(cfg), f"config: the modalities of {dataset.name}")
    choices = miss_choices(modalities)
    if cfg.TEST.MISS not in choices:
        raise ValueError(f"config: TEST.MISS must be one of {list(choices)} for the modalities "
                         f"{', '.join(modalities)} of {dataset.name} (empty: the full input; the first letters of "
                         f"the missing modalities; all: every setting; any: every query x gallery pair of "
                         f"settings), got {cfg.TEST.MISS!r}")
    for key in ("TEST.MISS_QUERY", "TEST.MISS_GALLERY"):
        if _get(cfg, key) not in choices[:-2]:
            raise ValueError(f"config: {key} must be one of {list(choices[:-2])} for the modalities "
                             f"{', '.join(modalities)} of {dataset.name} (empty: the full input), got "
                             f"{_get(cfg, key)!r}")
    if (cfg.TEST.MISS_QUERY or cfg.TEST.MISS_GALLERY) and cfg.TEST.MISS:
        raise ValueError(f"config: TEST.MISS {cfg.TEST.MISS!r} and TEST.MISS_QUERY / TEST.MISS_GALLERY both choose "
                         f"the missing modalities; give one of them (TEST.MISS r is TEST.MISS_QUERY r with "
                         f"TEST.MISS_GALLERY r)")
    method.check_modalities(modalities, f"{dataset.name}")


class SignalConfig(AliasNode):
    """A yacs ``CfgNode`` whose ``merge_from_file`` and ``merge_from_list`` follow the command line's rules:
    ``_BASE_`` inheritance, yes/no booleans, unknown keys and ill-typed values reported with the file (or
    "command line") and key. The checks between keys (``validate``) run once the config is complete, when it
    is frozen: merges may pass through combinations that are invalid on the way (SOLVER.IMS_PER_BATCH
    before DATALOADER.NUM_INSTANCE)."""

    def _check_mutable(self):
        if self.is_frozen():
            raise AttributeError("the config is frozen; call cfg.defrost() before merging into it")

    def merge_from_file(self, cfg_filename):
        self._check_mutable()
        merge_file(self, cfg_filename)

    def merge_from_list(self, cfg_list):
        self._check_mutable()
        merge_opts(self, list(cfg_list))

    def freeze(self):
        """Check the whole config (``validate``, for the root node), then make it immutable."""
        if all(section in self for section in ("MODEL", "INPUT", "DATASETS", "SOLVER", "TEST")):
            validate(self)
        super().freeze()


def key_declarations():
    """The KeyTable of every key: config/defaults.py's and each registered method's ``MODEL.<METHOD>.*``."""
    from modeling.methods import method_specs
    table = KEYS.copy()
    for spec in method_specs():
        table.add_keys(spec.own_keys(), owner=spec.name)
    return table


def get_cfg():
    """Return a fresh, mutable configuration at its defaults (config/defaults.py and the methods' sections).

    Its ``merge_from_file(path)`` and ``merge_from_list([KEY, VALUE, ...])`` work as on the command line
    (``_BASE_`` inheritance, yes/no booleans, aliases, errors naming unknown keys and ill-typed values);
    ``freeze()`` runs the config checks; ``utils.keyfacts.key_table(cfg)`` holds what each key is."""
    return key_declarations().tree(SignalConfig)


def load_config(config_file="", opts=(), freeze=True):
    """Defaults, then ``config_file`` (if any), then ``opts``; validated and (by default) frozen."""
    cfg = get_cfg()
    if config_file:
        merge_file(cfg, config_file)
    merge_opts(cfg, list(opts))
    if freeze:
        cfg.freeze()
    else:
        validate(cfg)
    return cfg
