"""Signal's checkpoints: the authors' release (``Signal_model.pth``) converted to this project's names, and the
identity / camera counts read from a state dict's keys (checkpoints that store no sizes)."""
import re

from utils.checkpoint import strip_module_prefix

from ...base import class_token_sizes
from ...convert import convert_official_vit_state

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
_OFFICIAL_TOWER = "clip_vision_encoder.base."


def is_official_checkpoint(state):
    """Whether ``state`` is in the layout of the authors' release (the CLIP tower under clip_vision_encoder)."""
    return any(k.startswith("clip_vision_encoder.") for k in state)


def recognizes(state):
    """The authors' layout, or this project's (the shared encoder under ``backbone.vit``)."""
    return is_official_checkpoint(state) or any(k.startswith("backbone.vit.") for k in state)


def convert_official_state(state, model):
    """The official Signal checkpoint (CLIP tower in OpenAI naming, fp16 weights) -> our state dict; our own
    layout passes through."""
    state = strip_module_prefix(state)
    if not is_official_checkpoint(state):
        return state
    visual = {"visual." + k[len(_OFFICIAL_TOWER):]: v for k, v in state.items() if k.startswith(_OFFICIAL_TOWER)}
    out = {"backbone.vit." + k: v for k, v in convert_official_vit_state(visual, model.backbone.vit).items()}
    for k, v in state.items():
        if k.startswith(_OFFICIAL_TOWER) or _OFFICIAL_UNUSED.match(k):
            continue
        new = k
        for pattern, repl in _OFFICIAL_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = v.float() if v.is_floating_point() else v
    return out


# The official release's classifiers and camera table, when the layout is not ours.
_OFFICIAL_CLASSIFIERS = ("classifier_r.weight", "classifier_var.weight")


def sizes(state):
    """(identity count, camera-table rows; 0 without SIE) of a Signal state dict in either layout; None for
    the identity count when no classifier is found."""
    if not is_official_checkpoint(state):
        classes, cams = class_token_sizes(state)
        if classes is None and "classifier_sim.weight" in state:
            classes = state["classifier_sim.weight"].shape[0]
        return classes, cams
    classes = next((state[k].shape[0] for k in ("classifier.weight",) + _OFFICIAL_CLASSIFIERS if k in state), None)
    cams = state["clip_vision_encoder.cv_embed"].shape[0] if "clip_vision_encoder.cv_embed" in state else 0
    return classes, cams
