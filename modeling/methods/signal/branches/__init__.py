"""Signal's branches: modules that read the shared encoder's tokens and add a feature, a loss term, or both.

A branch is registered once with a ``BranchSpec``; Signal builds the enabled ones in ``order`` and, for each,
a BN neck and classifier when it has a feature (``bottleneck_<name>`` / ``classifier_<name>``), appends its
eval feature after the class tokens, and returns its loss term as ``outputs[<name>]``, which the loss
weights with ``loss_weight(cfg)``. Every module of this folder is imported (and so registered) with it: a new
branch is one file here, which declares its config keys too (``config_keys``, under ``MODEL.SIGNAL.``;
docs/extending.md).

A branch module has:
    ``feat_dim``: the width of its feature (0: a loss-only branch, not run at evaluation);
    ``branch_outputs(cls, patches)`` with ``cls`` [B, M, D] and ``patches`` [B, M, N, D] (M modalities) -> a dict of
        ``feature`` [B, F] (its head's feature and, unless ``eval`` is given, its eval feature),
        ``eval`` [B, F] (optional) and ``loss`` (a scalar, its loss term before weighting).
"""
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from utils.modalities import MODALITIES
from utils.registry import Registry


@dataclass(frozen=True)
class BranchSpec:
    """Args:
        name: attribute and state-dict prefix of the module, name of its head and loss term.
        build: ``build(cfg, width, grid, modalities)`` -> the module, or None when its config switch is off
            (``width``: the encoder's token width D, ``grid``: its patch rows and columns, ``modalities``: the
            modality names of a batch, in order).
        order: position among the branches (features are concatenated, heads and losses listed, in order).
        loss_weight: ``loss_weight(cfg)`` -> the weight of its loss term (a branch that returns ``loss``).
        config_keys: its config keys (``utils.keyfacts.Key``s named ``MODEL.SIGNAL.<KEY>``), each with its
            default and facts; Signal adds them to the config.
    """
    name: str
    build: Callable
    order: int = 100
    loss_weight: Optional[Callable] = None
    config_keys: Tuple = ()


_BRANCHES = Registry("branch")


def register_branch(spec):
    """Register ``spec`` under ``spec.name``; returns it."""
    return _BRANCHES.register(spec.name, spec, getattr(spec.build, "__module__", None))


def branch_specs():
    """The registered branches, in their order."""
    return sorted(_BRANCHES.entries(), key=lambda s: (s.order, s.name))


def build_branches(cfg, width, grid, modalities=MODALITIES):
    """{name: module or None (switched off)} of every registered branch, in order."""
    return {spec.name: spec.build(cfg, width, grid, tuple(modalities)) for spec in branch_specs()}


def branch_config_keys():
    """The config keys every branch declares, in branch order."""
    return tuple(k for spec in branch_specs() for k in spec.config_keys)


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
