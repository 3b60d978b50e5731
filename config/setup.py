"""Build the resolved configuration: defaults <- YAML file <- command-line ``KEY VALUE`` pairs."""
import ast
import os

import yaml
from yacs.config import CfgNode as CN

from .defaults import get_cfg

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0", "none", ""}

_CHOICES = {
    "MODEL.TRANSFORMER_TYPE": ("ViT-B-16", "vit_base_patch16_224", "vit_custom"),
    "MODEL.DIRECT": (0, 1),
    "MODEL.LAM_OFFSET_CHANNELS": (1, 2),
    "DATASETS.NAMES": ("RGBNT201", "RGBNT100", "MSVR310", "Synthetic"),
    "SOLVER.SCHEDULER": ("cosine", "multistep"),
    "SOLVER.OPTIMIZER_NAME": ("Adam", "AdamW", "SGD"),
    "SOLVER.AMP": ("bf16", "fp16", "none"),
    "TEST.MISS": ("", "r", "n", "t", "rn", "rt", "nt"),
}


def _coerce(key, value, default, source):
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
        if key == "TEST.MISS" and str(value).lower() in ("none", "nothing"):
            return ""
        return str(value)
    if type(value) is not type(default):
        raise ValueError(f"{source}: {key} expects a {type(default).__name__}, got {value!r}")
    return value


def _merge(cfg, updates, source, prefix=""):
    for name, value in updates.items():
        key = prefix + name
        if name not in cfg:
            raise KeyError(f"{source}: unknown config key {key!r}")
        if isinstance(cfg[name], CN):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {key} is a section and expects a mapping, got {value!r}")
            _merge(cfg[name], value, source, key + ".")
        else:
            cfg[name] = _coerce(key, value, cfg[name], source)


def merge_file(cfg, path):
    """Merge a YAML file into ``cfg``; unknown keys and ill-typed values name the file and key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base:
        merge_file(cfg, os.path.join(os.path.dirname(path), base))
    _merge(cfg, data, path)


def merge_opts(cfg, opts):
    """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` command-line pairs into ``cfg``."""
    if len(opts) % 2:
        raise ValueError(f"command-line overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        node = key.split(".")[-1]
        parent = cfg
        for part in key.split(".")[:-1]:
            if part not in parent or not isinstance(parent[part], CN):
                raise KeyError(f"command line: unknown config key {key!r}")
            parent = parent[part]
        if node not in parent:
            raise KeyError(f"command line: unknown config key {key!r}")
        parent[node] = _coerce(key, value, parent[node], "command line")


def validate(cfg):
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = cfg[section][name]
        if value not in choices:
            raise ValueError(f"config: {key} must be one of {list(choices)}, got {value!r}")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST", "DATASETS.SYNTHETIC.SIZE"):
        node = cfg
        for part in key.split("."):
            node = node[part]
        if len(node) != 2 or any(int(v) <= 0 for v in node):
            raise ValueError(f"config: {key} must be [H, W] with positive sizes, got {list(node)}")
    if cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ValueError(
            f"config: SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
            f"DATALOADER.NUM_INSTANCE ({cfg.DATALOADER.NUM_INSTANCE})")
    if cfg.MODEL.TOPK < 1:
        raise ValueError(f"config: MODEL.TOPK must be >= 1, got {cfg.MODEL.TOPK}")


class SignalConfig(CN):
    """A yacs ``CfgNode`` whose ``merge_from_file`` and ``merge_from_list`` follow the command line's rules:
    ``_BASE_`` inheritance, yes/no booleans, unknown keys and ill-typed values reported with the file (or
    "command line") and key, and the config checks run after each merge."""

    def _check_mutable(self):
        if self.is_frozen():
            raise AttributeError("the config is frozen; call cfg.defrost() before merging into it")

    def merge_from_file(self, cfg_filename):
        self._check_mutable()
        merge_file(self, cfg_filename)
        validate(self)

    def merge_from_list(self, cfg_list):
        self._check_mutable()
        merge_opts(self, list(cfg_list))
        validate(self)


def load_config(config_file="", opts=(), freeze=True):
    """Defaults, then ``config_file`` (if any), then ``opts``; validated and (by default) frozen."""
    cfg = get_cfg()
    if config_file:
        merge_file(cfg, config_file)
    merge_opts(cfg, list(opts))
    validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg
