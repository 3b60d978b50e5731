"""What each config key is: every fact the run-folder checks, result names, config checks and weight loading
need about a key, declared once with the key (``config/defaults.py``, or the method that owns it).

A key is declared with its default and one of the roles below, refined by keyword where needed::

    key("MODEL.SIE_COE", 1.0, MODEL)
    key("SOLVER.BASE_LR", 3.5e-4, TRAIN(low=0.0, what="a learning rate >= 0"))
    key("MODEL.SIGNAL.TOPK", 80, MODEL(low=1), aliases=("MODEL.TOPK",))

Roles (what a change of the key does):
    FREE        nothing that is trained or evaluated (where files are, speed, logging): free on --resume,
                not part of a result's name.
    TRAIN       training only (recipe, augmentation, loss weights): --resume asks for --allow-change.
    EVAL        the evaluated figures only (test settings): part of the result name.
    MODEL       what a trained model computes: a checkpoint is evaluated with its training value; part of
                the result name; --resume asks for --allow-change.
    SHAPE       the model's tensors: --resume refuses it (fine-tune into another folder); as MODEL besides.
    DATA        the data: part of the result name; fixes an epoch's batch order (a mid-epoch checkpoint
                cannot continue under another value).
    DATA_SHAPE  as DATA, and it sizes the model (identity and camera counts): --resume refuses it.

A key under ``MODEL.<METHOD>.`` that a method declares belongs to that method: under another
``MODEL.METHOD`` it changes nothing and counts as FREE.
"""
import copy
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

from yacs.config import CfgNode


@dataclass(frozen=True)
class Facts:
    """Args:
        shape: changes the model's tensors (a resumed run cannot change it).
        model: changes what a trained model computes (evaluation must use the checkpoint's value).
        evaluated: changes the evaluated figures (part of test.py's result name).
        free: may change on --resume without --allow-change.
        batch_order: fixes the order of an epoch's batches.
        path: a file or folder path ('~' is expanded; made absolute where it names a result).
        choices: the allowed values, or None.
        low, high: the allowed range (either side None: open); ``what`` says it in words for errors.
    """
    shape: bool = False
    model: bool = False
    evaluated: bool = False
    free: bool = False
    batch_order: bool = False
    path: bool = False
    choices: Optional[Tuple[Any, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    what: str = ""

    def __call__(self, **changes):
        """This role with some facts added (``TRAIN(low=1)``)."""
        if "choices" in changes and changes["choices"] is not None:
            changes["choices"] = tuple(changes["choices"])
        facts = replace(self, **changes)
        if (facts.low is not None or facts.high is not None) and not facts.what:
            facts = replace(facts, what=_range_words(facts.low, facts.high))
        return facts

    def refuses(self, value):
        """None when ``value`` is allowed, else what is expected, in words."""
        if self.choices is not None and value not in self.choices:
            return f"one of {list(self.choices)}"
        if self.low is not None or self.high is not None:
            if value != value or (self.low is not None and value < self.low) or \
                    (self.high is not None and value > self.high):
                return self.what
        return None


def _range_words(low, high):
    kind = "an integer" if isinstance(low if low is not None else high, int) else "a value"
    if high is None:
        return f"{kind} >= {low:g}"
    if low is None:
        return f"{kind} <= {high:g}"
    return f"{kind} in [{low:g}, {high:g}]"


FREE = Facts(free=True)
TRAIN = Facts()
EVAL = Facts(evaluated=True)
MODEL = Facts(model=True, evaluated=True)
SHAPE = Facts(shape=True, model=True, evaluated=True)
DATA = Facts(evaluated=True, batch_order=True)
DATA_SHAPE = Facts(shape=True, evaluated=True, batch_order=True)
ROLES = {"FREE": FREE, "TRAIN": TRAIN, "EVAL": EVAL, "MODEL": MODEL, "SHAPE": SHAPE, "DATA": DATA,
         "DATA_SHAPE": DATA_SHAPE}
_INERT = FREE  # a key of a method the config does not use


@dataclass(frozen=True)
class Key:
    """One config key: its dotted ``name``, ``default`` value, ``facts`` and the older dotted names that
    read and write it (``aliases``: each within a section that holds the key, e.g. MODEL.TOPK for
    MODEL.SIGNAL.TOPK)."""
    name: str
    default: Any
    facts: Facts
    aliases: Tuple[str, ...] = ()


class KeyTable:
    """Every key of a configuration, with its facts; ``tree()`` builds the config itself."""

    def __init__(self):
        self.keys = {}     # name -> Key
        self.owner = {}    # name -> method name, for keys a method declares
        self.aliases = {}  # alias -> name

    def copy(self):
        table = KeyTable()
        table.keys, table.owner, table.aliases = dict(self.keys), dict(self.owner), dict(self.aliases)
        return table

    def add(self, name, default, facts, aliases=(), owner=None):
        """Declare the key ``name``; a name (or alias) declared twice, or a key without facts, is an error."""
        if not isinstance(facts, Facts):
            raise TypeError(f"config key {name}: its facts must be a role of utils.keyfacts (FREE, TRAIN, EVAL, "
                            f"MODEL, SHAPE, DATA, DATA_SHAPE), got {facts!r}")
        for n in (name, *aliases):
            if n in self.keys or n in self.aliases:
                raise ValueError(f"config key {n} is declared twice")
        for alias in aliases:
            section = alias.rpartition(".")[0]
            if not name.startswith(section + "." if section else ""):
                raise ValueError(f"config key {name}: its alias {alias} must lie in a section that holds it")
        if any(k.startswith(name + ".") for k in self.keys) or any(name.startswith(k + ".") for k in self.keys):
            raise ValueError(f"config key {name} is both a key and a section")
        self.keys[name] = Key(name, default, facts, tuple(aliases))
        for alias in aliases:
            self.aliases[alias] = name
        if owner is not None:
            self.owner[name] = owner
        return self.keys[name]

    def add_keys(self, keys, owner=None):
        for k in keys:
            self.add(k.name, k.default, k.facts, k.aliases, owner)

    def canonical(self, name):
        """The key's own name for ``name`` or one of its aliases."""
        return self.aliases.get(name, name)

    def label(self, name):
        """``name`` for messages: with its aliases, which a config may use instead (``MODEL.SIGNAL.TOPK
        (MODEL.TOPK)``)."""
        k = self.keys.get(name)
        return f"{name} ({', '.join(k.aliases)})" if k is not None and k.aliases else name

    def canonical_flat(self, flat):
        """``flat`` ({dotted name: value}, e.g. a checkpoint's stored config) with aliases renamed."""
        out = {}
        for k, v in flat.items():
            out.setdefault(self.canonical(k), v)
        return out

    def facts_for(self, cfg):
        """{name: Facts} of every key for the config ``cfg``: keys of another method than its MODEL.METHOD
        count as FREE."""
        method = cfg.MODEL.METHOD
        return {name: (k.facts if self.owner.get(name, method) == method else _INERT) for name, k in self.keys.items()}

    def tree(self, node_class=CfgNode):
        """A fresh configuration (nodes of ``node_class``) holding every key at its default, its aliases
        resolved by ``AliasNode``s, and this table (``key_table(cfg)``)."""
        root = node_class()
        for name, k in self.keys.items():
            *sections, leaf = name.split(".")
            node = root
            for s in sections:
                if s not in node:
                    dict.__setitem__(node, s, node_class())
                node = node[s]
            dict.__setitem__(node, leaf, copy.deepcopy(k.default))
        for alias, name in self.aliases.items():
            section = alias.rpartition(".")[0]
            node = root
            for s in section.split(".") if section else ():
                node = node[s]
            rest = name[len(section) + 1:] if section else name
            node.__dict__.setdefault("_aliases", {})[alias.rpartition(".")[2]] = tuple(rest.split("."))
        root.__dict__["_key_table"] = self
        return root


def key_table(cfg):
    """The KeyTable of a configuration built by ``config.get_cfg`` / ``load_config``."""
    table = cfg.__dict__.get("_key_table") if isinstance(cfg, CfgNode) else None
    if table is None:
        raise TypeError("this config was not built by config.get_cfg() or config.load_config(): it holds no "
                        "declaration of its keys")
    return table


def keys_with(cfg, fact):
    """The dotted names of the keys of ``cfg`` that have ``fact`` ('shape', 'model', 'evaluated', 'free',
    'batch_order', 'path')."""
    return {name for name, f in key_table(cfg).facts_for(cfg).items() if getattr(f, fact)}


def alias_target(node, name):
    """(node, leaf name) that the alias ``name`` of ``node`` stands for, or None when it is none."""
    path = node.__dict__.get("_aliases", {}).get(name)
    if path is None:
        return None
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


class AliasNode(CfgNode):
    """A yacs node on which the aliases of its keys read and write the keys themselves
    (``cfg.MODEL.TOPK`` is ``cfg.MODEL.SIGNAL.TOPK``)."""

    def __getattr__(self, name):
        if name in self:
            return self[name]
        target = alias_target(self, name) if name != "__dict__" else None
        if target is not None:
            return getattr(*target)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        target = alias_target(self, name) if name not in self else None
        if target is not None:
            setattr(*target, value)
        else:
            super().__setattr__(name, value)
