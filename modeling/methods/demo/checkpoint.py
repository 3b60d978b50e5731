"""DeMo's checkpoints: the official code's layout (``model.state_dict()`` of its DeMo module: the CLIP tower
under ``BACKBONE.base`` in OpenAI naming, ``generalFusion`` for HDM / ATM with one module per expert) converted
to this project's names and back, and the identity / camera counts read from a state dict's keys.

The official repository (github.com/924973292/DeMo) releases no trained DeMo model; its training runs save
``DeMo_<epoch>.pth`` / ``DeMobest.pth`` in this layout.
"""
import re

import torch

from utils.checkpoint import CheckpointError, strip_module_prefix

from ...base import class_token_sizes
from ...convert import convert_official_vit_state

OFFICIAL_TOWER = "BACKBONE.base."
OFFICIAL_CAMERA = "BACKBONE.cv_embed"
# the official per-modality names (reducers, heads) and HDM's branch letters -> modalities
_REDUCERS = {"rgb_reduce": "RGB", "nir_reduce": "NI", "tir_reduce": "TI"}
_SUFFIX = {"r": "RGB", "n": "NI", "t": "TI"}
_GATE = "generalFusion.moe.gating_network.gate."
_EXPERT = re.compile(r"^generalFusion\.moe\.experts\.(\d+)\.expertHead\.(\d+)\.mlp\.([02])\.(\w+)$")

# official -> ours, applied in order (first match wins); the experts are stacked separately
_RENAMES = [
    (re.compile(r"^BACKBONE\.cv_embed$"), lambda m: "backbone.cam_embed"),
    (re.compile(r"^(rgb|nir|tir)_reduce\.(.*)$"), lambda m: f"pife.reduce.{_REDUCERS[m[1] + '_reduce']}.{m[2]}"),
    (re.compile(r"^generalFusion\.([rnt]+)_token$"), lambda m: f"hdm.queries.{m[1]}"),
    (re.compile(r"^generalFusion\.([rnt]+)\.(.*)$"), lambda m: f"hdm.attn.{m[1]}.{m[2]}"),
    (re.compile(r"^" + re.escape(_GATE) + r"linear_re\.(.*)$"), lambda m: f"atm.router.{m[1]}"),
    (re.compile(r"^" + re.escape(_GATE) + r"(q|k)_\.weight$"), lambda m: f"atm.router_{m[1]}.weight"),
    (re.compile(r"^classifier_([rnt])\.(.*)$"), lambda m: f"classifiers.{_SUFFIX[m[1]]}.{m[2]}"),
    (re.compile(r"^bottleneck_([rnt])\.(.*)$"), lambda m: f"bottlenecks.{_SUFFIX[m[1]]}.{m[2]}"),
]

# keys a DeMo model has, in either layout (anything else is another method's)
_DEMO_KEYS = re.compile(r"^(backbone\.|pife\.|hdm\.|atm\.|bottlenecks?(_moe)?\.|classifiers?(_moe)?\.|"
                        r"BACKBONE\.cv_embed$|BACKBONE\.base\.(class_embedding|positional_embedding|proj|conv1\.|"
                        r"ln_pre\.|ln_post\.|transformer\.resblocks\.)|(rgb|nir|tir)_reduce\.|generalFusion\.|"
                        r"bottleneck_[rnt]\.|classifier_[rnt]\.)")
_OWN_MARKS = ("pife.", "hdm.", "atm.", "classifier_moe.")


def is_official_checkpoint(state):
    """Whether ``state`` is in the official code's layout (the tower under ``BACKBONE.base``)."""
    return any(k.startswith(("BACKBONE.base.", OFFICIAL_CAMERA)) for k in state)


def recognizes(state):
    """A DeMo model with PIFE, HDM or ATM, in the official layout or ours. Without them a DeMo model is the
    Baseline (and its official layout that of the authors' other methods): only the ``meta`` of this project's
    checkpoints, or MODEL.METHOD, names it then."""
    if is_official_checkpoint(state):
        return any(k.startswith(("generalFusion.", "classifier_moe.")) for k in state)
    return any(k.startswith(_OWN_MARKS) for k in state)


def _stack_experts(experts):
    """{(head, expert, layer, param): tensor} of the official per-expert modules -> our stacked tensors."""
    heads = 1 + max(h for h, _, _, _ in experts)
    num = 1 + max(e for _, e, _, _ in experts)

    def stacked(layer, param):
        try:
            return torch.stack([torch.stack([experts[h, e, layer, param] for h in range(heads)]) for e in range(num)])
        except KeyError as err:
            h, e, *_ = err.args[0]
            raise CheckpointError(f"official DeMo checkpoint: generalFusion.moe.experts.{h}.expertHead.{e}.mlp."
                                  f"{layer}.{param} is missing (every head needs all {num} experts)") from None

    out = {"atm.expert_weight": stacked(0, "weight"), "atm.expert_bias": stacked(0, "bias")}
    for p in ("weight", "bias", "running_mean", "running_var"):
        out[f"atm.expert_norm.{p}"] = stacked(2, p).flatten()
    out["atm.expert_norm.num_batches_tracked"] = experts[0, 0, 2, "num_batches_tracked"].clone() \
        if (0, 0, 2, "num_batches_tracked") in experts else torch.tensor(0)
    return out


def convert_official_state(state, model):
    """The official DeMo layout -> our state dict (floats as float32); our own layout passes through. Keys the
    official model does not have are kept as they are (weight loading reports them)."""
    state = strip_module_prefix(state)
    if not is_official_checkpoint(state):
        return state
    visual = {"visual." + k[len(OFFICIAL_TOWER):]: v for k, v in state.items() if k.startswith(OFFICIAL_TOWER)}
    out = {"backbone.vit." + k: v for k, v in convert_official_vit_state(visual, model.backbone.vit).items()}
    experts = {}
    for k, v in state.items():
        if k.startswith(OFFICIAL_TOWER):
            continue
        v = v.float() if v.is_floating_point() else v
        m = _EXPERT.match(k)
        if m:
            experts[int(m[1]), int(m[2]), int(m[3]), m[4]] = v
            continue
        for pattern, rename in _RENAMES:
            hit = pattern.match(k)
            if hit:
                k = rename(hit)
                break
        out[k] = v
    if experts:
        out.update(_stack_experts(experts))
    return out


# ours -> official: the tower in OpenAI naming (the inverse of timm's conversion), the rest renamed back
_TOWER_NAMES = [
    (re.compile(r"^patch_embed\.proj\.weight$"), "conv1.weight"),
    (re.compile(r"^norm_pre\.(weight|bias)$"), r"ln_pre.\1"),
    (re.compile(r"^norm\.(weight|bias)$"), r"ln_post.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm([12])\.(weight|bias)$"), r"transformer.resblocks.\1.ln_\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"transformer.resblocks.\1.attn.in_proj_\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"transformer.resblocks.\1.attn.out_proj.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc1\.(weight|bias)$"), r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc2\.(weight|bias)$"), r"transformer.resblocks.\1.mlp.c_proj.\2"),
]
_LETTER = {m: s for s, m in _SUFFIX.items()}
_REDUCER_OF = {m: r for r, m in _REDUCERS.items()}


def official_entries(name, value, grid=None):
    """Our state-dict entry ``name`` -> [(official name, tensor)]: the stacked experts give one entry per
    expert (``grid`` = ATM's (features E, chunks H), needed for ``atm.expert_norm.*``); an entry without an
    official counterpart (``head.bias`` of a CLIP projection, which is zero) gives []."""
    if name.startswith("backbone.vit."):
        rest = name[len("backbone.vit."):]
        if rest == "cls_token":
            return [(OFFICIAL_TOWER + "class_embedding", value.reshape(value.shape[-1]))]
        if rest == "pos_embed":
            return [(OFFICIAL_TOWER + "positional_embedding", value.reshape(value.shape[-2:]))]
        if rest == "head.weight":
            return [(OFFICIAL_TOWER + "proj", value.t())]
        if rest == "head.bias":
            return []
        for pattern, repl in _TOWER_NAMES:
            if pattern.match(rest):
                return [(OFFICIAL_TOWER + pattern.sub(repl, rest), value)]
        raise KeyError(f"{name}: no official DeMo counterpart (the official tower is the CLIP ViT)")
    if name == "backbone.cam_embed":
        return [(OFFICIAL_CAMERA, value)]
    expert = "generalFusion.moe.experts.{h}.expertHead.{e}.mlp.{layer}.{param}"
    m = re.match(r"^atm\.expert_(weight|bias)$", name)
    if m:
        E, H = value.shape[:2]
        return [(expert.format(h=h, e=e, layer=0, param=m[1]), value[e, h]) for e in range(E) for h in range(H)]
    m = re.match(r"^atm\.expert_norm\.(\w+)$", name)
    if m:
        if grid is None:
            raise ValueError(f"{name}: ATM's grid (features, chunks) is needed to split it per expert")
        E, H = grid
        v = value.expand(E, H) if value.dim() == 0 else value.reshape(E, H, -1)
        return [(expert.format(h=h, e=e, layer=2, param=m[1]), v[e, h]) for e in range(E) for h in range(H)]
    renames = [
        (r"^pife\.reduce\.(\w+)\.(.*)$", lambda m: f"{_REDUCER_OF[m[1]]}.{m[2]}"),
        (r"^hdm\.queries\.(\w+)$", lambda m: f"generalFusion.{m[1]}_token"),
        (r"^hdm\.attn\.(\w+)\.(.*)$", lambda m: f"generalFusion.{m[1]}.{m[2]}"),
        (r"^atm\.router\.(.*)$", lambda m: f"{_GATE}linear_re.{m[1]}"),
        (r"^atm\.router_(q|k)\.weight$", lambda m: f"{_GATE}{m[1]}_.weight"),
        (r"^classifiers\.(\w+)\.(.*)$", lambda m: f"classifier_{_LETTER[m[1]]}.{m[2]}"),
        (r"^bottlenecks\.(\w+)\.(.*)$", lambda m: f"bottleneck_{_LETTER[m[1]]}.{m[2]}"),
    ]
    for pattern, rename in renames:
        hit = re.match(pattern, name)
        if hit:
            return [(rename(hit), value)]
    return [(name, value)]


def to_official_state(state, grid=None):
    """Our DeMo state dict (or any part of it) -> the official layout (the official code's ``load_param`` reads
    it). ``grid``: ATM's (features, chunks), read from ``atm.expert_weight`` when the part holds it."""
    if "atm.expert_weight" in state:
        grid = tuple(state["atm.expert_weight"].shape[:2])
    out = {}
    for k, v in state.items():
        out.update(official_entries(k, v, grid))
    return out


def _foreign_keys(state):
    return [k for k in state if not _DEMO_KEYS.match(k)]


def sizes(state):
    """(identity count, camera-table rows; 0 without SIE) of a DeMo state dict in either layout; None for the
    identity count when no classifier is found. A state dict holding keys no DeMo model has (another method's
    model) is refused, naming the method that recognises it."""
    foreign = _foreign_keys(state)
    if foreign:
        from ..registry import methods_recognizing
        others = [n for n in methods_recognizing(state) if n != "DeMo"]
        hint = (f"; its keys are those of {' / '.join(others)}: set MODEL.METHOD {others[0]} (its config) to use it"
                if others else "")
        raise CheckpointError(f"MODEL.METHOD is DeMo, but the checkpoint is not a DeMo model: it holds "
                              f"{foreign[0]!r} and {len(foreign) - 1} more keys no DeMo model has{hint}")
    if is_official_checkpoint(state):
        classes = next((state[k].shape[0] for k in ("classifier_moe.weight", "classifier.weight", "classifier_r.weight")
                        if k in state), None)
        cams = state[OFFICIAL_CAMERA].shape[0] if OFFICIAL_CAMERA in state else 0
        return classes, cams
    classes, cams = class_token_sizes(state)
    if classes is None and "classifier_moe.weight" in state:
        classes = state["classifier_moe.weight"].shape[0]
    return classes, cams
