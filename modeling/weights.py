"""Loading weights: pretrained backbones, our own checkpoints and the authors' releases of each method.

Every loader reports what it could not place; a checkpoint that does not fit the architecture is an
error that lists the mismatched keys.
"""
import logging
import re

from utils.checkpoint import CheckpointError, key_report, read_checkpoint, strip_module_prefix

from .convert import convert_official_vit_state
from .methods import (checkpoint_meta, method_names, method_spec, methods_recognizing, model_state_dict,
                      stored_meta)

logger = logging.getLogger("signal.weights")


# Weights that do not fit (or cannot be read) are checkpoint errors: one class, under its historical name too.
WeightsError = CheckpointError


def read_weights(path):
    """A weights file (MODEL.PRETRAIN_PATH, TEST.WEIGHT, a tool's --weight) read by the one reader."""
    return read_checkpoint(path, "weights file")


def _check_and_load(module, state, path, what, ignore_missing=()):
    own = module.state_dict()
    mismatched, unexpected, missing = key_report(own, state)
    missing = [k for k in missing if not any(re.fullmatch(p, k) for p in ignore_missing)]
    if mismatched or unexpected or missing:
        lines = [f"{path} does not fit the {what}:"]
        lines += [f"  shape mismatch  {m}" for m in mismatched.values()]
        lines += [f"  unexpected key  {k}" for k in unexpected]
        lines += [f"  missing key     {k}" for k in missing]
        raise WeightsError("\n".join(lines))
    state = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=False)


def load_pretrained_backbone(backbone, path, state=None):
    """Load pretrained weights (read from ``path`` unless ``state`` is given) into ``backbone.vit`` with its
    backbone spec's conversion; the camera table stays randomly initialised."""
    spec = getattr(backbone.vit, "signal_spec", None)
    convert = spec.convert if spec is not None else convert_official_vit_state
    if convert is None:
        raise WeightsError(f"MODEL.PRETRAIN_PATH {path}: the backbone {spec.name} takes no pretrained checkpoint "
                           f"(its spec has no converter)")
    state = convert(read_weights(path) if state is None else state, backbone.vit)
    _check_and_load(backbone.vit, state, path, "backbone")
    logger.info("Loaded pretrained backbone weights from %s (%d tensors)", path, len(state))


def whole_model_state(state):
    """The model state dict when ``state`` is a whole model of a registered method (a checkpoint of this
    project, which stores its ``meta``, or a state dict some method recognises: ours, the authors' release),
    else None (a backbone checkpoint)."""
    if stored_meta(state).get("method"):
        return model_state_dict(state)
    whole = model_state_dict(state)
    return whole if methods_recognizing(whole) else None


def _spec_of(model):
    return method_spec(checkpoint_meta(model).get("method", "Signal"))


def model_state(state, model, path=None):
    """Every whole-model format as this project's model state dict: a training checkpoint (``{'model': ...}``),
    a plain state dict (with or without the DDP ``module.`` prefix) or the authors' release of the model's
    method (its spec's ``convert``)."""
    state = model_state_dict(state)
    convert = _spec_of(model).convert
    if convert is not None:
        converted = convert(state, model)
        if path and set(converted) != set(state):
            logger.info("Converted the authors' checkpoint layout of %s", path)
        state = converted
    return strip_module_prefix(state)


def load_finetune(model, state, path):
    """Start training from a whole model given as MODEL.PRETRAIN_PATH (fine-tuning an earlier run).

    Every tensor is loaded. Classifiers sized for another identity count are left at their initialisation
    (reported); any other shape mismatch is an error listing the keys. Modules present on one side only
    (a checkpoint trained with other module switches) are reported and keep their initialisation."""
    state = model_state(state, model)
    own = model.state_dict()
    mismatched, unexpected, missing = key_report(own, state)
    spec = _spec_of(model)
    reset = [k for k in mismatched if spec.is_classifier(k)]
    bad = [line for k, line in mismatched.items() if k not in reset]
    if bad:
        raise WeightsError(f"{path} (MODEL.PRETRAIN_PATH, a whole model) does not fit this model:\n"
                           + "\n".join(f"  shape mismatch  {m}" for m in bad)
                           + "\nA camera-table mismatch means another camera count: set MODEL.SIE_CAMERA no, or "
                             "fine-tune on data with the same cameras.")
    load = {k: v.to(own[k].dtype) if v.is_floating_point() else v
            for k, v in state.items() if k in own and k not in reset}
    model.load_state_dict(load, strict=False)
    modules = lambda keys: sorted({".".join(k.split(".")[:2]) for k in keys})  # noqa: E731
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    logger.info("Fine-tuning from the model %s: %d tensors loaded", path, len(load))
    if reset:
        logger.warning("Classifiers re-initialised (the checkpoint has %d identities, this data %d): %s",
                       state[reset[0]].shape[0], own[reset[0]].shape[0], ", ".join(modules(reset)))
    if missing:
        logger.warning("Not in %s, left at initialisation: %s", path, ", ".join(modules(missing)))
    if unexpected:
        logger.warning("In %s but not in this model, ignored: %s", path, ", ".join(modules(unexpected)))
    return model


def model_sizes(state, path, method=None):
    """(identity count of the classifiers, rows of the camera table; 0 without SIE) of a whole-model
    checkpoint, so a model can be built to load it without the training data: the sizes it stores
    (``meta``), else read from its keys by the spec of its method (``method``, or the one that recognises
    it: ours or the authors' layout)."""
    meta = stored_meta(state)
    if method and meta.get("method") and meta["method"] != method:
        raise WeightsError(f"{path} is a checkpoint of the method {meta['method']!r}, but MODEL.METHOD is "
                           f"{method!r}: set MODEL.METHOD {meta['method']} (its config) to evaluate it")
    if meta.get("num_classes") is not None:
        return int(meta["num_classes"]), int(meta.get("num_cameras") or 0)
    whole = model_state_dict(state)
    if method and not method_spec(method).recognizes(whole):
        others = [n for n in methods_recognizing(whole) if n != method]
        if others:
            raise WeightsError(f"{path} holds the keys of a {' / '.join(others)} model, but MODEL.METHOD is "
                               f"{method!r}: set MODEL.METHOD {others[0]} (its config) to evaluate it")
    names = [method] if method else methods_recognizing(whole)
    if not names:
        raise WeightsError(f"{path} is not a model checkpoint of a registered method ({', '.join(method_names())}): "
                           f"no stored sizes and no method recognises its keys")
    classes, cams = method_spec(names[0]).sizes(whole)
    if classes is None:
        raise WeightsError(f"{path}: no classifier weights of a {names[0]} model found (MODEL.METHOD), cannot "
                           f"tell the model's identity count")
    return int(classes), int(cams)


def check_trained_config(state, cfg, path):
    """A checkpoint that stores its training config (every checkpoint of this project does) must be evaluated
    with the same model keys: otherwise one line says what it was trained as and what the config asks for,
    instead of a list of key mismatches, or a silently different model (another MODEL.TOPK)."""
    import yaml

    from utils.mapping import flatten
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, str):
        return
    from utils.keyfacts import key_table, keys_with
    trained, asked = key_table(cfg).canonical_flat(flatten(yaml.safe_load(saved) or {})), flatten(cfg)
    keys = keys_with(cfg, "model")  # what changes what a trained model computes (config/defaults.py)
    diff = [k for k in sorted(asked) if k in keys and k in trained and trained[k] != asked[k]]
    if diff:
        raise WeightsError(f"{path} was trained with " + ", ".join(f"{k} {trained[k]!r}" for k in diff)
                           + "; the config asks for " + ", ".join(f"{asked[k]!r}" for k in diff)
                           + ": evaluate it with the config of its run (OUTPUT_DIR/config.yaml) or those values")


def load_weights(model, path, state=None):
    """Load a full-model checkpoint into ``model``: our training checkpoint (``{'model': ...}``), a plain
    state dict of our model, or the authors' release of its method (read from ``path`` unless ``state`` is
    given). Raises WeightsError listing every key that does not fit."""
    state = model_state(read_weights(path) if state is None else state, model, path)
    _check_and_load(model, state, path, "model", ignore_missing=(r".*num_batches_tracked",))
    logger.info("Loaded model weights from %s", path)
    return model
