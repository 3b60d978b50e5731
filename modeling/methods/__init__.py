"""Methods: one folder each (``modeling/methods/<name>/``), registered by name and chosen with MODEL.METHOD.

A method is a ``MethodSpec`` registered with ``register_method``. The engine asks the spec, never the model
class, for everything that differs between methods:

    ``build(cfg, backbone, num_classes, modalities)``: the model around the shared encoder ``backbone``
        (``modeling.backbone.build_backbone``). Training forward: ``model(images, cam_label)`` with
        ``images`` {modality: [B, 3, H, W]} returns a dict of named outputs; evaluation forward returns one
        feature tensor [B, F] and ``model.feat_dim`` is F.
    ``loss(cfg)``: a module ``loss(outputs, target)`` -> {name: already weighted scalar term}; the loop
        sums and logs them.
    ``param_rule(cfg, name, depth, shared)`` (optional): (lr, weight decay) of parameter ``name``, given
        ``shared``, the answer of the shared recipe (``solver.param_rule`` with the spec's ``backbone_prefixes``
        and ``classifier_pattern``), which is the default.
    ``recognizes(state)``: whether a model state dict without stored sizes (the authors' release, a plain
        state dict) is one of this method's models; ``sizes(state)`` -> (identities, camera-table rows) read
        from its keys; ``convert(state, model)`` turns a foreign layout (the authors' release) into the
        model's own, or is None.

Checkpoints written by this project store ``meta`` = {method, num_classes, num_cameras, modalities}
(``checkpoint_meta``), read back before any key is guessed from. Every sub-package of this folder is
imported (and so registered) with it: a new method is one folder here plus its YAML (docs/extending.md).
"""
import importlib
import pkgutil

from .registry import (MethodSpec, checkpoint_meta, method_names, method_spec, method_specs, methods_recognizing,
                       model_state_dict, register_method, stored_meta)

for _module in pkgutil.iter_modules(__path__):
    if _module.name == "registry":
        continue
    importlib.import_module(f"{__name__}.{_module.name}")


__all__ = ["MethodSpec", "register_method", "method_names", "method_spec", "method_specs", "checkpoint_meta",
           "stored_meta", "model_state_dict", "methods_recognizing"]
