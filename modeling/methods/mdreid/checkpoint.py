"""MDReID's checkpoints: the authors' layout (``torch.save(model.state_dict())`` of their code, e.g.
``MDReIDbest.pth``) converted to this project's names, and the identity / camera counts read from a state
dict that stores none.

The authors' layout: the OpenAI CLIP visual tower under ``BACKBONE.base.`` (``class_embedding``,
``positional_embedding``, ``conv1``, ``ln_pre``, ``transformer.resblocks.<i>``, ``ln_post``, ``proj``; with
ADD_SHARE also ``add_image_token``, the same tensor as ``class_embedding``, and a position embedding with one
more row, the shared token's, second), the camera table ``BACKBONE.cv_embed``, the GLOBAL_LOCAL reducers
``{rgb,nir,tir}_reduce``, and per head ``classifier_<x>`` / ``bottleneck_<x>``: x = r, n, t (per modality), s
(shared), rs, ns, ts ([specific ; shared], never read by a loss), or none (DIRECT).
"""
import re

import torch

from utils.checkpoint import CheckpointError, strip_module_prefix

from ..registry import methods_recognizing
from ...base import class_token_sizes
from ...convert import convert_official_vit_state

OFFICIAL_TOWER = "BACKBONE.base."
_CLS, _SHARED, _POS = (OFFICIAL_TOWER + k for k in ("class_embedding", "add_image_token", "positional_embedding"))
_LETTERS = {"r": "RGB", "n": "NI", "t": "TI"}
_REDUCERS = {"rgb": "RGB", "nir": "NI", "tir": "TI"}
# our keys whose presence marks an MDReID model in this project's layout
_OWN_MARKS = ("shared_pos_embed", "bottleneck_shared.", "classifier_shared.")


def is_official_checkpoint(state):
    """Whether ``state`` is in the authors' layout (the CLIP tower under BACKBONE.base.)."""
    return any(k.startswith(OFFICIAL_TOWER) for k in state)


def recognizes(state):
    """An MDReID model with the shared token (ADD_SHARE), in the authors' layout or ours. Without it an MDReID
    model is a Baseline (and its official layout that of the authors' other methods): only the ``meta`` of this
    project's checkpoints, or MODEL.METHOD, names it then."""
    if is_official_checkpoint(state):
        return _SHARED in state or "classifier_s.weight" in state
    return any(k.startswith(_OWN_MARKS) for k in state)


def _rename_head(key, model):
    """Our name of a non-tower key of the authors' layout; None for the [specific ; shared] heads when
    ``model`` has none (they feed no loss and no feature)."""
    if key == "BACKBONE.cv_embed":
        return "backbone.cam_embed"
    m = re.match(r"^(rgb|nir|tir)_reduce\.(.*)$", key)
    if m:
        return f"reducers.{_REDUCERS[m.group(1)]}.{m.group(2)}"
    m = re.match(r"^(classifier|bottleneck)(?:_(r|n|t|s|rs|ns|ts))?\.(.*)$", key)
    if not m:
        return key
    kind, head, rest = m.groups()
    if head is None:
        return key
    if head == "s":
        return f"{kind}_shared.{rest}"
    if len(head) == 2:
        if not getattr(model, "eloss_heads", False):
            return None
        return f"{kind}s_eloss.{_LETTERS[head[0]]}.{rest}"
    return f"{kind}s.{_LETTERS[head]}.{rest}"


def convert_official_state(state, model):
    """The authors' MDReID state dict -> our model's (the CLIP tower through the shared encoder's converter);
    our own layout passes through. The shared token is the class embedding (its copy under
    ``add_image_token`` must be equal); the position embedding's second row becomes ``shared_pos_embed``."""
    state = strip_module_prefix(state)
    if not is_official_checkpoint(state):
        return state
    shared = _SHARED in state
    if shared != (getattr(model, "shared_pos_embed", None) is not None):
        raise CheckpointError(
            f"the MDReID checkpoint was trained with MODEL.MDREID.ADD_SHARE {'yes' if shared else 'no'} "
            f"({'with' if shared else 'without'} {_SHARED}); the config builds the model with "
            f"{'no' if shared else 'yes'}")
    out = {}
    visual = {}
    for k, v in state.items():
        if not k.startswith(OFFICIAL_TOWER) or k == _SHARED:
            continue
        visual["visual." + k[len(OFFICIAL_TOWER):]] = v
    if shared:
        if not torch.equal(state[_SHARED].reshape(-1), state[_CLS].reshape(-1)):
            raise CheckpointError(f"{_SHARED} differs from {_CLS}: in an MDReID model the shared token is the class "
                                  f"embedding (one parameter), this checkpoint cannot be represented")
        pos = state[_POS]
        visual["visual.positional_embedding"] = torch.cat([pos[:1], pos[2:]], 0)
        out["shared_pos_embed"] = pos[1].reshape(1, 1, -1).float()
    tower = convert_official_vit_state(visual, model.backbone.vit)
    out.update({"backbone.vit." + k: v for k, v in tower.items()})
    for k, v in state.items():
        if k.startswith(OFFICIAL_TOWER):
            continue
        new = _rename_head(k, model)
        if new is not None:
            out[new] = v.float() if v.is_floating_point() else v
    return out


_OFFICIAL_CLASSIFIERS = ("classifier_r.weight", "classifier.weight", "classifier_s.weight")


def sizes(state):
    """(identity count, camera-table rows; 0 without SIE) of an MDReID state dict in either layout; None for
    the identity count when no classifier is found. Another method's checkpoint (its own layout) is refused
    naming that method."""
    if is_official_checkpoint(state):
        classes = next((state[k].shape[0] for k in _OFFICIAL_CLASSIFIERS if k in state), None)
        cams = state["BACKBONE.cv_embed"].shape[0] if "BACKBONE.cv_embed" in state else 0
        return classes, cams
    if not any(k.startswith("backbone.") for k in state):
        others = [n for n in methods_recognizing(state) if n != "MDReID"]
        raise CheckpointError(
            "this checkpoint is not an MDReID model: its keys are those of "
            + (f"a {others[0]} model (set MODEL.METHOD {others[0]} to evaluate it)" if others
               else "no registered method (neither the authors' MDReID layout nor this project's)"))
    classes, cams = class_token_sizes(state)
    if classes is None and "classifier_shared.weight" in state:
        classes = state["classifier_shared.weight"].shape[0]
    return classes, cams
