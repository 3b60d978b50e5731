"""The method registry: ``MethodSpec``, ``register_method`` and the checkpoint ``meta`` (see the package's
docstring)."""
import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

from utils.checkpoint import strip_module_prefix
from utils.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """Args:
        name: the value of MODEL.METHOD that selects it.
        build: ``build(cfg, backbone, num_classes, modalities)`` -> the model.
        loss: ``loss(cfg)`` -> the loss module.
        recognizes: ``recognizes(state)`` -> bool, for a model state dict that stores no ``meta``.
        sizes: ``sizes(state)`` -> (identity count, camera-table rows, 0 without one) of such a state dict.
        convert: ``convert(state, model)`` -> the model's own state dict, for a foreign layout; None: none.
        param_rule: ``param_rule(cfg, name, depth, shared)`` -> (lr, weight decay) of parameter ``name``, given
            ``shared``, the answer of the field's shared recipe (``solver.param_rule``); None: ``shared``.
        backbone_prefixes: state-dict prefixes of the encoder's parameters that train at the backbone LR.
        classifier_pattern: regular expression (``re.search``) of the classifiers' parameter names
            (SOLVER.CLASSIFIER_LR_FACTOR; reset when fine-tuning on another identity count).
        config_keys: its own config keys, ``utils.keyfacts.Key``s named ``MODEL.<NAME>.<KEY>`` (the name in
            capitals), each with its default and what a change of it does (the official code's flat names
            as ``aliases``); a tuple, or a function returning one (for keys of parts registered later).
            ``config.get_cfg`` adds them; under another MODEL.METHOD they change nothing.
        min_modalities: the fewest modalities it can be built for (Signal's interaction and alignments
            need a second modality).
        description: one line for listings.
    """
    name: str
    build: Callable
    loss: Callable
    recognizes: Callable
    sizes: Callable
    convert: Optional[Callable] = None
    param_rule: Optional[Callable] = None
    backbone_prefixes: Tuple[str, ...] = ("backbone.vit.",)
    classifier_pattern: str = r"(^|\.)classifiers?(_\w+)?\."
    config_keys: Union[Tuple, Callable] = ()
    min_modalities: int = 1
    description: str = ""

    def check_modalities(self, modalities, where="the dataset"):
        """Refuse (ValueError) modalities this method cannot be built for."""
        if len(modalities) < self.min_modalities:
            raise ValueError(f"config: MODEL.METHOD {self.name} needs at least {self.min_modalities} modalities; "
                             f"{where} has {len(modalities)} ({', '.join(modalities)})")

    def is_classifier(self, name):
        return re.search(self.classifier_pattern, name) is not None

    def own_keys(self):
        """Its ``config_keys`` as a tuple; a key outside its section ``MODEL.<NAME>.`` is an error."""
        keys = tuple(self.config_keys() if callable(self.config_keys) else self.config_keys)
        section = f"MODEL.{self.name.upper()}."
        for k in keys:
            if not k.name.startswith(section):
                raise ValueError(f"method {self.name}: its config key {k.name} must lie in {section}*")
        return keys


_METHODS = Registry("method")


def register_method(spec):
    """Register ``spec`` under ``spec.name``; returns it."""
    return _METHODS.register(spec.name, spec, getattr(spec.build, "__module__", None))


def method_names():
    return _METHODS.names()


def method_spec(name):
    """The spec of MODEL.METHOD ``name``; a ValueError listing the registered methods otherwise."""
    spec = _METHODS.get(name)
    if spec is None:
        raise ValueError(f"config: MODEL.METHOD {name!r} is not a registered method; registered: "
                         f"{', '.join(method_names())}")
    return spec


def method_specs():
    return _METHODS.entries()


def checkpoint_meta(model):
    """What a checkpoint of ``model`` (built by ``modeling.build_model``) stores about its own sizes."""
    return dict(getattr(model, "checkpoint_meta", None) or {})


def stored_meta(state):
    """The ``meta`` a checkpoint of this project stores ({} for other files and older checkpoints)."""
    meta = state.get("meta") if isinstance(state, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def model_state_dict(state):
    """The model's state dict inside a checkpoint (``{'model': ...}``) or a plain state dict, without the
    DDP ``module.`` prefix."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return strip_module_prefix(state)


def methods_recognizing(state):
    """The names of the methods that recognise the whole-model state dict ``state``."""
    state = model_state_dict(state)
    return [spec.name for spec in method_specs() if spec.recognizes(state)]
