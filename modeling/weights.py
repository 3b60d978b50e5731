"""Loading weights: pretrained backbones, our own checkpoints and the official Signal checkpoint.

Every loader reports what it could not place; a checkpoint that does not fit the architecture is an
error that lists the mismatched keys.
"""
import logging
import re

from timm.models.eva import Eva
from timm.models.vision_transformer import checkpoint_filter_fn

from utils.checkpoint import CheckpointError, key_report, read_checkpoint, strip_module_prefix

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


def convert_backbone_state(state, vit, bilinear=True):
    """OpenAI CLIP (``visual.*``) or timm ViT / EVA state dict -> the timm ``vit`` state dict (float32). The
    position embedding is resized bilinearly (align_corners=False, no antialias) as the official code does, or
    with timm's own resampling (``bilinear=False``)."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in strip_module_prefix(state).items()}
    if isinstance(vit, Eva):
        # EVA02 / DINOv3 in timm, OpenCLIP or Meta naming: timm's own conversion, position embeddings
        # resampled as timm does
        from timm.models.eva import checkpoint_filter_fn as eva_filter
        own = vit.state_dict()
        return {k: v for k, v in eva_filter(state, vit).items() if k in own or not k.startswith("head")}
    if "visual.class_embedding" in state:
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    if bilinear:
        out = checkpoint_filter_fn(state, vit, interpolation="bilinear", antialias=False)
    else:
        out = checkpoint_filter_fn(state, vit)
    own = vit.state_dict()
    if "head.bias" not in own:
        out.pop("head.bias", None)
    if "head.weight" not in own:  # ImageNet classifier of a timm checkpoint
        out.pop("head.weight", None)
        out.pop("head.bias", None)
    return out


def convert_official_vit_state(state, vit):
    """A CLIP / timm ViT checkpoint as the official code loads it: position embedding resized bilinearly."""
    return convert_backbone_state(state, vit, bilinear=True)


def convert_timm_state(state, vit):
    """A timm ViT / EVA checkpoint (or OpenCLIP / Meta naming) with timm's own conversion and resampling."""
    return convert_backbone_state(state, vit, bilinear=False)


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


# Official Signal checkpoint -> our names. W_v of the token selection exists there but is never used.
_OFFICIAL_RENAMES = [
    (r"^clip_vision_encoder\.cv_embed$", "backbone.cam_embed"),
    (r"^SIM\.token_selection\.(W_q|W_k)\.", r"sim.selection.\1."),
    (r"^SIM\.modal_interactive\.", "sim.interaction."),
    (r"^classifier_var\.", "classifier_sim."),
    (r"^bottleneck_var\.", "bottleneck_sim."),
    (r"^AlignM\.contra_temp$", "gam.temperature"),
    (r"^AlignM\.DAS_r\.", "lam.samplers.RGB."),
    (r"^AlignM\.DAS_n\.", "lam.samplers.NI."),
    (r"^AlignM\.DAS_t\.", "lam.samplers.TI."),
    (r"^classifier_r\.", "classifiers.RGB."), (r"^classifier_n\.", "classifiers.NI."),
    (r"^classifier_t\.", "classifiers.TI."),
    (r"^bottleneck_r\.", "bottlenecks.RGB."), (r"^bottleneck_n\.", "bottlenecks.NI."),
    (r"^bottleneck_t\.", "bottlenecks.TI."),
]
_OFFICIAL_UNUSED = re.compile(r"^SIM\.token_selection\.W_v\.")


def is_official_checkpoint(state):
    return any(k.startswith("clip_vision_encoder.") for k in state)


def convert_official_state(state, model):
    """The official Signal checkpoint (CLIP tower in OpenAI naming, fp16 weights) -> our state dict."""
    state = strip_module_prefix(state)
    prefix = "clip_vision_encoder.base."
    visual = {"visual." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out = {"backbone.vit." + k: v for k, v in convert_official_vit_state(visual, model.backbone.vit).items()}
    for k, v in state.items():
        if k.startswith(prefix) or _OFFICIAL_UNUSED.match(k):
            continue
        new = k
        for pattern, repl in _OFFICIAL_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = v.float() if v.is_floating_point() else v
    return out


def signal_model_state(state):
    """The model state dict when ``state`` is a whole Signal model (our training checkpoint or state dict,
    or the official Signal checkpoint), else None (a backbone checkpoint)."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if is_official_checkpoint(state) or any(k.startswith("backbone.vit.") for k in strip_module_prefix(state)):
        return state
    return None


_CLASSIFIER = re.compile(r"^(classifier|classifiers\.\w+|classifier_\w+)\.")  # every head's classifier


def model_state(state, model, path=None):
    """Every whole-model format as this project's model state dict: a training checkpoint (``{'model': ...}``),
    a plain state dict (with or without the DDP ``module.`` prefix) or the official Signal checkpoint."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if is_official_checkpoint(state):
        state = convert_official_state(state, model)
        if path:
            logger.info("Converted the official Signal checkpoint layout of %s", path)
    return strip_module_prefix(state)


def load_finetune(model, state, path):
    """Start training from a whole Signal model given as MODEL.PRETRAIN_PATH (fine-tuning an earlier run).

    Every tensor is loaded. Classifiers sized for another identity count are left at their initialisation
    (reported); any other shape mismatch is an error listing the keys. Modules present on one side only
    (a checkpoint trained with other module switches) are reported and keep their initialisation."""
    state = model_state(state, model)
    own = model.state_dict()
    mismatched, unexpected, missing = key_report(own, state)
    reset = [k for k in mismatched if _CLASSIFIER.match(k)]
    bad = [line for k, line in mismatched.items() if k not in reset]
    if bad:
        raise WeightsError(f"{path} (MODEL.PRETRAIN_PATH, a Signal model) does not fit this model:\n"
                           + "\n".join(f"  shape mismatch  {m}" for m in bad)
                           + "\nA camera-table mismatch means another camera count: set MODEL.SIE_CAMERA no, or "
                             "fine-tune on data with the same cameras.")
    load = {k: v.to(own[k].dtype) if v.is_floating_point() else v
            for k, v in state.items() if k in own and k not in reset}
    model.load_state_dict(load, strict=False)
    modules = lambda keys: sorted({".".join(k.split(".")[:2]) for k in keys})  # noqa: E731
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    logger.info("Fine-tuning from the Signal model %s: %d tensors loaded", path, len(load))
    if reset:
        logger.warning("Classifiers re-initialised (the checkpoint has %d identities, this data %d): %s",
                       state[reset[0]].shape[0], own[reset[0]].shape[0], ", ".join(modules(reset)))
    if missing:
        logger.warning("Not in %s, left at initialisation: %s", path, ", ".join(modules(missing)))
    if unexpected:
        logger.warning("In %s but not in this model, ignored: %s", path, ", ".join(modules(unexpected)))
    return model


def model_sizes(state, path):
    """(identity count of the classifiers, rows of the camera table; 0 without SIE) of a whole-model
    checkpoint (ours or the official layout), so a model can be built to load it without the training data."""
    state = signal_model_state(state)
    if state is None:
        raise WeightsError(f"{path} is not a Signal model checkpoint (no backbone.vit.* or clip_vision_encoder.* "
                           f"keys)")
    state = strip_module_prefix(state)
    classes = next((state[k].shape[0] for k in ("classifier.weight", "classifiers.RGB.weight", "classifier_r.weight",
                                               "classifier_sim.weight", "classifier_var.weight") if k in state), None)
    if classes is None:
        raise WeightsError(f"{path}: no classifier weights found, cannot tell the model's identity count")
    cams = next((state[k].shape[0] for k in ("backbone.cam_embed", "clip_vision_encoder.cv_embed") if k in state), 0)
    return int(classes), int(cams)


# Keys that change what an evaluated model computes: the evaluation config must agree with the checkpoint's.
# Each branch adds its own (BranchSpec.model_keys).
_MODEL_KEYS = ("MODEL.TRANSFORMER_TYPE", "MODEL.CUSTOM_VIT.", "MODEL.SIE_CAMERA", "MODEL.SIE_COE", "MODEL.DIRECT",
               "INPUT.SIZE_TEST", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD")


def check_trained_config(state, cfg, path):
    """A checkpoint that stores its training config (every checkpoint of this project does) must be evaluated
    with the same model keys: otherwise one line says what it was trained as and what the config asks for,
    instead of a list of key mismatches, or a silently different model (another MODEL.TOPK)."""
    import yaml

    from utils.mapping import flatten
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, str):
        return
    trained, asked = flatten(yaml.safe_load(saved) or {}), flatten(cfg)
    from .branches import branch_keys
    keys = _MODEL_KEYS + branch_keys("model_keys")
    diff = [k for k in sorted(asked) if k.startswith(keys) and k in trained and trained[k] != asked[k]]
    if diff:
        raise WeightsError(f"{path} was trained with " + ", ".join(f"{k} {trained[k]!r}" for k in diff)
                           + "; the config asks for " + ", ".join(f"{asked[k]!r}" for k in diff)
                           + ": evaluate it with the config of its run (OUTPUT_DIR/config.yaml) or those values")


def load_weights(model, path, state=None):
    """Load a full-model checkpoint into ``model``: our training checkpoint (``{'model': ...}``), a plain
    state dict of our model, or the official Signal checkpoint (read from ``path`` unless ``state`` is
    given). Raises WeightsError listing every key that does not fit."""
    state = model_state(read_weights(path) if state is None else state, model, path)
    _check_and_load(model, state, path, "model", ignore_missing=(r".*num_batches_tracked",))
    logger.info("Loaded model weights from %s", path)
    return model
