"""A transcription of the official MDReID code (Feng et al., "MDReID: Modality-Decoupled Learning for
Any-to-Any Multi-Modal Object Re-Identification", NeurIPS 2025; github.com/stone96123/MDReID, commit
f2026e8) in plain tensor operations over a state dict with the official model's ``state_dict()`` names and
shapes. Used as the reference that tests compare a library implementation against: the checkpoint layout,
how a CLIP checkpoint is loaded, the training forward for every combination of the official switches
(``MODEL.DIRECT``, ``ADD_SHARE``, ``ADD_ELOSS``, ``ADD_CLOSS``, ``GLOBAL_LOCAL``), the loss terms the official
loop sums, the evaluation feature with and without missing modalities (including the any-to-any pairing of
the official ``do_inference_mismatch``), the optimizer's parameter rules and the LR schedule.

Written from the official behaviour (modeling/make_model.py, modeling/meta_arch.py, modeling/clip/model.py,
engine/processor.py, layers/make_loss.py, layers/triplet_loss.py, solver/*); it shares no code with the
package under test. Official defects are reproduced and marked ``DEFECT``.

Token layout of the official CLIP tower with ``ADD_SHARE``: ``[CLS, SHARED, patch_1 .. patch_N]``; the SHARED
token is the *same Parameter* as the class embedding (``add_image_token = class_embedding`` after loading),
so both state-dict keys hold one tensor; only the CLS token gets the camera embedding; the position
embedding has ``N + 2`` rows. Final LayerNorm and projection are applied to every token; the backbone
returns ``(tokens[:, 1:], tokens[:, 0])``, so "cash[:, 0]" is the shared token.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

from reference.official import cosine_lr, cross_entropy_label_smooth, euclidean_distance, soft_triplet

MODALITIES = ("RGB", "NI", "TI")
TOWER = "BACKBONE.base."
CAM = "BACKBONE.cv_embed"
CLS = TOWER + "class_embedding"
SHARED = TOWER + "add_image_token"
POS = TOWER + "positional_embedding"
# the two names of one Parameter in the official model (state_dict lists both; named_parameters only CLS)
TIED = {SHARED: CLS}
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# per-modality heads and the GLOBAL_LOCAL reducers, by modality, with the official suffixes
_SUFFIX = {"RGB": "r", "NI": "n", "TI": "t"}
_REDUCE = {"RGB": "rgb_reduce", "NI": "nir_reduce", "TI": "tir_reduce"}
# TEST.MISS -> the missing modalities (any other string, e.g. the configs' "nothing", means none missing)
MISSING = {"r": ("RGB",), "n": ("NI",), "t": ("TI",), "rn": ("RGB", "NI"), "rt": ("RGB", "TI"), "nt": ("NI", "TI")}

# official loss weights hard-coded in engine/processor.py
ORTH_WEIGHT = 1.5     # lambda1, ADD_CLOSS
RATIO_WEIGHT = 5.25   # lambda2, ADD_ELOSS
SHARED_HEAD_FACTOR = 3  # cal_loss(..., s_loc=6): the shared head's ID + triplet terms x3


# ----------------------------------------------------------------------------------------------------
# State dict: keys, shapes, random weights, CLIP loading
# ----------------------------------------------------------------------------------------------------
def _head_dims(out_dim, direct, add_share, add_eloss):
    """(name, feature width) of every BN-neck head the official __init__ builds, in its order."""
    if direct:
        return [("", 3 * out_dim)]  # official names: classifier / bottleneck
    heads = [(s, out_dim) for s in ("r", "n", "t")]
    if add_share:
        heads.append(("s", 3 * out_dim))
    if add_eloss:
        # DEFECT: _ns and _ts are built (and saved) but never used; the forward uses _rs for all three
        heads += [(s, 2 * out_dim) for s in ("rs", "ns", "ts")]
    return heads


def _neck(name):
    return ("classifier" + (f"_{name}" if name else ""), "bottleneck" + (f"_{name}" if name else ""))


def random_official_state(num_classes=5, num_cams=3, width=96, depth=4, patch=8, out_dim=64, size=(32, 16),
                          stride=None, direct=0, add_share=True, add_eloss=True, global_local=False,
                          sie_camera=True, seed=0):
    """A random state dict with the official MDReID model's keys, shapes and order (its ``state_dict()``)
    for a CLIP-style ViT of the given size. The official code hard-codes two widths that a tiny tower must
    replace: the camera embedding is ``[num_cams, 1, 768]`` (here ``width``) and the head width is 512 for
    ``ViT-B-16`` (here ``out_dim``); with ViT-B/16 (width 768, projection 512) the shapes are the official
    ones. ``add_image_token`` is the same tensor object as ``class_embedding`` (official tie).

    Trainable: every parameter except the BN-neck biases (``frozen_keys``); buffers: ``buffer_keys``.
    The attention head count is not in the state dict: the official tower uses ``width // 64``.

    ``stride``: the position embedding here has one row per conv output position, ``(H - patch) // stride
    + 1`` by ``(W - patch) // stride + 1`` (+ CLS, SHARED). The official model sizes it as ``(H // stride) *
    (W // stride)`` rows (+2) (meta_arch.build_transformer -> load_clip_to_cpu h/w_resolution), which is the
    same only for ``stride == patch``; with an overlapping stride the official forward fails on the
    position-embedding add (DEFECT; the official configs all use stride = patch = 16)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=1.0: torch.randn(*s, generator=g) * std
    stride = stride or patch
    gh, gw = (size[0] - patch) // stride + 1, (size[1] - patch) // stride + 1
    sd = OrderedDict()
    if sie_camera:
        sd[CAM] = r(num_cams, 1, width, std=0.02)
    sd[CLS] = r(width, std=width ** -0.5)
    if add_share:
        sd[SHARED] = sd[CLS]  # one Parameter, two names
    sd[POS] = r(gh * gw + (2 if add_share else 1), width, std=width ** -0.5)
    sd[TOWER + "proj"] = r(width, out_dim, std=width ** -0.5)
    sd[TOWER + "conv1.weight"] = r(width, 3, patch, patch, std=(3 * patch * patch) ** -0.5)
    sd[TOWER + "ln_pre.weight"], sd[TOWER + "ln_pre.bias"] = 1 + r(width, std=0.1), r(width, std=0.1)
    for i in range(depth):
        b = f"{TOWER}transformer.resblocks.{i}."
        sd[b + "attn.in_proj_weight"] = r(3 * width, width, std=width ** -0.5)
        sd[b + "attn.in_proj_bias"] = r(3 * width, std=0.02)
        sd[b + "attn.out_proj.weight"] = r(width, width, std=width ** -0.5)
        sd[b + "attn.out_proj.bias"] = r(width, std=0.02)
        sd[b + "ln_1.weight"], sd[b + "ln_1.bias"] = 1 + r(width, std=0.1), r(width, std=0.1)
        sd[b + "mlp.c_fc.weight"] = r(4 * width, width, std=width ** -0.5)
        sd[b + "mlp.c_fc.bias"] = r(4 * width, std=0.02)
        sd[b + "mlp.c_proj.weight"] = r(width, 4 * width, std=(4 * width) ** -0.5)
        sd[b + "mlp.c_proj.bias"] = r(width, std=0.02)
        sd[b + "ln_2.weight"], sd[b + "ln_2.bias"] = 1 + r(width, std=0.1), r(width, std=0.1)
    sd[TOWER + "ln_post.weight"], sd[TOWER + "ln_post.bias"] = 1 + r(width, std=0.1), r(width, std=0.1)
    if global_local:
        for m in MODALITIES:  # LayerNorm(2d) -> Linear(2d, d) -> QuickGELU
            p = _REDUCE[m]
            sd[p + ".0.weight"], sd[p + ".0.bias"] = 1 + r(2 * out_dim, std=0.1), r(2 * out_dim, std=0.1)
            sd[p + ".1.weight"] = r(out_dim, 2 * out_dim, std=(2 * out_dim) ** -0.5)
            sd[p + ".1.bias"] = r(out_dim, std=0.02)
    for name, dim in _head_dims(out_dim, direct, add_share, add_eloss):
        fc, bn = _neck(name)
        sd[fc + ".weight"] = r(num_classes, dim, std=0.05)  # official init: normal(std 0.001)
        sd[bn + ".weight"] = 1 + r(dim, std=0.1)              # official init: 1 (kaiming BN rule / default)
        sd[bn + ".bias"] = r(dim, std=0.1)                    # official init 0, frozen
        sd[bn + ".running_mean"] = r(dim, std=0.1)
        sd[bn + ".running_var"] = 1 + torch.rand(dim, generator=g) * 0.5
        sd[bn + ".num_batches_tracked"] = torch.tensor(0)
    return sd


def frozen_keys(sd, frozen_backbone=False):
    """Parameters with ``requires_grad=False`` in the official model, in ``named_parameters`` order: every
    BN-neck bias (including ``bottleneck_t`` and ``bottleneck_ts``, which the official code never passes to
    its init function); with ``MODEL.FROZEN`` (``frozen_backbone``) also every ``BACKBONE.base.*`` parameter:
    ``mark_only_lora_as_trainable`` freezes all tower parameters whose name lacks "adapter", i.e. all of
    them for MDReID's plain CLIP tower (the camera embedding ``BACKBONE.cv_embed`` stays trainable). The
    tied alias ``add_image_token`` is not listed (named_parameters deduplicates it)."""
    return [k for k in sd if not k.endswith(BUFFER_SUFFIXES) and k not in TIED
            and ((k.startswith("bottleneck") and k.endswith(".bias")) or (frozen_backbone and k.startswith(TOWER)))]


def buffer_keys(sd):
    return [k for k in sd if k.endswith(BUFFER_SUFFIXES)]


def optimizer_keys(sd, frozen_backbone=False):
    """The names ``make_optimizer`` sees, in ``model.named_parameters()`` order: buffers, frozen parameters
    (``frozen_keys``) and the tied alias ``add_image_token`` (deduplicated by named_parameters) are absent."""
    frozen = set(frozen_keys(sd, frozen_backbone))
    return [k for k in sd if not k.endswith(BUFFER_SUFFIXES) and k not in frozen and k not in TIED]


def resize_pos_embed(posemb, grid):
    """The official resize: row 0 (CLS) kept, the square grid bilinearly resized (align_corners=False, no
    antialias) to ``grid`` = (H/stride, W/stride), rows flattened row-major."""
    token, rest = posemb[:1], posemb[1:]
    gs = int(math.sqrt(len(rest)))
    rest = rest.reshape(1, gs, gs, -1).permute(0, 3, 1, 2)
    rest = F.interpolate(rest, size=tuple(grid), mode="bilinear")
    rest = rest.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([token, rest.squeeze()], 0)


def clip_to_official(clip_sd, grid, add_share=True):
    """The ``BACKBONE.base.*`` entries the official ``build_model`` makes from an OpenAI CLIP state dict
    (``visual.*`` keys; the text tower is dropped): every tensor in fp32 (its ``convert_weights`` makes the
    model fp32 and ``load_state_dict`` copies into it); the position embedding resized to ``grid`` *in the
    checkpoint's dtype* (the official resizes the raw, usually fp16, state-dict tensor before the copy, so
    the bilinear interpolation runs in fp16 for an fp16 checkpoint; casting first differs by ~1e-4); with
    ``ADD_SHARE`` the CLS row is duplicated in front (rows 0 and 1 both the CLS row, then separate
    trainable rows) and ``add_image_token`` is tied to the class embedding (the checkpoint has no such key:
    the official load reports it missing, then ties)."""
    out = OrderedDict()
    for k, v in clip_sd.items():
        if k.startswith("visual."):
            out[TOWER + k[len("visual."):]] = v
    pos = resize_pos_embed(out[POS], grid)  # official: modeling/clip/model.py build_model, before load_state_dict
    if add_share:
        pos = torch.cat([pos[:1], pos], 0)
    out[POS] = pos
    out = OrderedDict((k, v.float().clone()) for k, v in out.items())
    if add_share:
        out[SHARED] = out[CLS]
    return out


# ----------------------------------------------------------------------------------------------------
# Forward (modeling/clip/model.py VisionTransformer, meta_arch.build_transformer, make_model.MDReID)
# ----------------------------------------------------------------------------------------------------
def backbone(sd, x, cam, heads, sie_coe=1.0, stride=None):
    """The official CLIP tower on a batch: ``[CLS (+ sie_coe * cv_embed[cam]), SHARED?, patches] + pos``,
    ln_pre, pre-norm blocks (sequence-first MHA, QuickGELU MLP), ln_post and the projection on every
    token. The shared token is present iff the state dict has ``add_image_token``; the camera embedding is
    added iff it has ``cv_embed`` (``SIE_CAMERA``). -> (tokens[:, 1:], tokens[:, 0])."""
    f = {k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)}
    conv = f["conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = len({k.split(".")[2] for k in f if k.startswith("transformer.resblocks.")})
    t = F.conv2d(x, conv, stride=stride or patch).flatten(2).transpose(1, 2)
    B = t.shape[0]
    cls = f["class_embedding"].expand(B, 1, width)
    if CAM in sd:
        cls = cls + sie_coe * sd[CAM][cam].reshape(-1, 1, width)
    lead = [cls]
    if "add_image_token" in f:
        lead.append(f["add_image_token"].reshape(1, 1, width).expand(B, 1, width))
    t = torch.cat(lead + [t], 1) + f["positional_embedding"]
    t = F.layer_norm(t, (width,), f["ln_pre.weight"], f["ln_pre.bias"]).permute(1, 0, 2)
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(t, (width,), f[b + "ln_1.weight"], f[b + "ln_1.bias"])
        t = t + F.multi_head_attention_forward(h, h, h, width, heads, f[b + "attn.in_proj_weight"],
                                               f[b + "attn.in_proj_bias"], None, None, False, 0.0,
                                               f[b + "attn.out_proj.weight"], f[b + "attn.out_proj.bias"],
                                               need_weights=False)[0]
        h = F.layer_norm(t, (width,), f[b + "ln_2.weight"], f[b + "ln_2.bias"])
        h = F.linear(h, f[b + "mlp.c_fc.weight"], f[b + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        t = t + F.linear(h, f[b + "mlp.c_proj.weight"], f[b + "mlp.c_proj.bias"])
    t = F.layer_norm(t.permute(1, 0, 2), (width,), f["ln_post.weight"], f["ln_post.bias"]) @ f["proj"]
    return t[:, 1:], t[:, 0]


def _stacked(sd, images, present, cams, heads, sie_coe, stride):
    """The present modalities concatenated into one batch (the official ``torch.cat`` order), the camera
    labels repeated alike when there is more than one; -> per-modality (cash, global) lists."""
    B = images[present[0]].shape[0]
    x = torch.cat([images[m] for m in present], 0)
    c = cams.repeat(len(present)) if cams.numel() > 1 else cams
    cash, glob = backbone(sd, x, c, heads, sie_coe, stride)
    return list(cash.split(B)), list(glob.split(B))


def _pool(tokens):
    """nn.AdaptiveAvgPool1d(1) over the token axis."""
    return F.adaptive_avg_pool1d(tokens.permute(0, 2, 1), 1).squeeze(-1)


def _reduce(sd, m, g, local):
    """GLOBAL_LOCAL: LayerNorm(2d) -> Linear(2d, d) -> QuickGELU on [global ; mean token]."""
    p = _REDUCE[m]
    h = torch.cat([g, local], -1)
    h = F.layer_norm(h, (h.shape[-1],), sd[p + ".0.weight"], sd[p + ".0.bias"])
    h = F.linear(h, sd[p + ".1.weight"], sd[p + ".1.bias"])
    return h * torch.sigmoid(1.702 * h)


def bn_train(sd, buffers, name, x):
    """BatchNorm1d in training mode: batch statistics; running statistics (momentum 0.1, unbiased
    variance) and ``num_batches_tracked`` updated in ``buffers``."""
    y = F.batch_norm(x, buffers[name + ".running_mean"], buffers[name + ".running_var"], sd[name + ".weight"],
                     sd[name + ".bias"], training=True, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        buffers[name + ".num_batches_tracked"].add_(1)
    return y


def _head(sd, buffers, name, feat):
    fc, bn = _neck(name)
    return F.linear(bn_train(sd, buffers, bn, feat), sd[fc + ".weight"])


def training_outputs(sd, buffers, images, cams, heads, direct=0, add_share=True, add_eloss=True,
                     global_local=False, sie_coe=1.0, stride=None):
    """The official training forward: exactly the flat tuple ``MDReID.forward`` returns in training.

    - ``direct``: ``(score, ori)``; ``ori`` = [g_R, g_N, g_T] (3d), or with ``add_share``
      [g_R, g_N, g_T, s_R, s_N, s_T] (6d) whose classifier reads only the shared half.
    - else: ``(score_R, g_R, score_N, g_N, score_T, g_T)``, + ``(score_S, [s_R, s_N, s_T])`` with
      ``add_share``, + ``(score_RS, [g_R; s_R], score_NS, [g_N; s_N], score_TS, [g_T; s_T])`` with
      ``add_share`` and ``add_eloss``.
    g_m: the class token of modality m (with ``global_local``: reduced [class ; mean token]); s_m: the
    shared token. ``buffers`` (usually ``sd`` itself) receives the BN running statistics."""
    cash, glob = _stacked(sd, images, MODALITIES, cams, heads, sie_coe, stride)
    if global_local:
        # DEFECT: in training the mean runs over cash = [shared token, patches]; the evaluation forward
        # with ADD_SHARE averages the patches only (cash[:, 1:]): a training/test mismatch
        glob = [_reduce(sd, m, g, _pool(c)) for m, g, c in zip(MODALITIES, glob, cash)]
    # cash[:, 0]: the shared token with ADD_SHARE; without it, the first patch token (used by the ELOSS
    # heads when ADD_ELOSS is set without ADD_SHARE, whose outputs are then never returned)
    first = [c[:, 0] for c in cash]
    if direct:
        if add_share:
            ori = torch.cat(glob + first, -1)
            return _head(sd, buffers, "", ori[:, ori.shape[1] // 2:]), ori
        ori = torch.cat(glob, -1)
        return _head(sd, buffers, "", ori), ori
    out = []
    for m, g in zip(MODALITIES, glob):
        out += [_head(sd, buffers, _SUFFIX[m], g), g]
    if add_share:
        share = torch.cat(first, -1)
        out += [_head(sd, buffers, "s", share), share]
    if add_eloss:
        for g, s in zip(glob, first):
            # DEFECT: classifier_rs / bottleneck_rs serve all three modalities (the _ns/_ts heads are
            # unused), so bottleneck_rs's running statistics are updated three times per iteration
            feat = torch.cat([g, s], -1)
            out += [_head(sd, buffers, "rs", feat), feat]
    if add_share:
        return tuple(out) if add_eloss else tuple(out[:8])
    return tuple(out[:6])


def output_names(direct=0, add_share=True, add_eloss=True):
    """Names of the entries ``training_outputs`` returns, in order."""
    if direct:
        return ["score", "feat"]
    names = []
    for m in MODALITIES:
        names += [f"score_{m}", f"feat_{m}"]
    if add_share:
        names += ["score_shared", "feat_shared"]
        if add_eloss:
            for m in MODALITIES:
                names += [f"score_{m}+shared", f"feat_{m}+shared"]
    return names


# ----------------------------------------------------------------------------------------------------
# Losses (engine/processor.py do_train, layers/make_loss.py, layers/triplet_loss.py)
# ----------------------------------------------------------------------------------------------------
def _aim(device=None):
    """The official target of the orthogonality loss: [[I3, 0], [0, ones(3, 3)]]."""
    top = torch.cat([torch.eye(3), torch.zeros(3, 3)], 1)
    bottom = torch.cat([torch.zeros(3, 3), torch.ones(3, 3)], 1)
    return torch.cat([top, bottom], 0).to(device)


def orth_loss_loop(ori_cls, ori_share):
    """The official ADD_CLOSS loop, per sample i: X = [g_R, g_N, g_T, s_R, s_N, s_T] (6 x d); rows
    L2-normalised (no epsilon), G = X Xᵀ (CoRefine); the rows of G normalised again with
    sqrt(sum G² + 1e-6) (featureL2Norm), W = Ĝ Ĝᵀ; sum((W - AIM)²) / 36 (mse_loss with size_average=False).
    Returns the batch mean (the official sum over i divided by B), unweighted."""
    rnt, rnts = ori_cls.chunk(3, dim=1), ori_share.chunk(3, dim=1)
    aim = _aim(ori_cls.device)
    total = 0
    for i in range(ori_cls.shape[0]):
        X = torch.cat([torch.stack([rnt[0][i], rnt[1][i], rnt[2][i]]),
                       torch.stack([rnts[0][i], rnts[1][i], rnts[2][i]])], 0)
        Xn = X / X.norm(dim=-1, keepdim=True)
        G = (Xn @ Xn.T)[None]
        Gn = G / torch.pow(torch.sum(torch.pow(G, 2), 2) + 1e-6, 0.5).unsqueeze(2)
        W = Gn @ Gn.transpose(1, 2)
        total = total + ((W - aim) ** 2).sum() / 36
    return total / ori_cls.shape[0]


def orth_loss(ori_cls, ori_share):
    """``orth_loss_loop`` without the loop over the batch (equal up to float rounding)."""
    B = ori_cls.shape[0]
    X = torch.cat([ori_cls.reshape(B, 3, -1), ori_share.reshape(B, 3, -1)], 1)  # [B, 6, d]
    Xn = X / X.norm(dim=-1, keepdim=True)
    G = Xn @ Xn.transpose(1, 2)
    Gn = G / (G.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    W = Gn @ Gn.transpose(1, 2)
    return ((W - _aim(X.device)) ** 2).sum((1, 2)).div(36).mean()


def _euclidean(x):
    N = x.shape[0]
    sq = x.pow(2).sum(1, keepdim=True).expand(N, N)
    return (sq + sq.T - 2 * x @ x.T).clamp(min=1e-12).sqrt()


def _hard(dist, target):
    N = dist.shape[0]
    pos = target[:, None] == target[None]
    return dist[pos].view(N, -1).max(1).values, dist[~pos].view(N, -1).min(1).values


def ratio_loss(feat_ss, feat_sp, feat_sh, target):
    """EnhancedTripletLoss (ADD_ELOSS): batch-hard mining on the [specific ; shared] feature ``ss`` and on
    the detached specific ``sp`` and shared ``sh`` features; s_p = max d_ap(ss) / (max d_ap(ss) +
    max d_ap(sp) + max d_ap(sh)), s_n = min d_an(ss) / (min d_an(ss) + min d_an(sp) + min d_an(sh)) (the
    sp/sh terms detached); loss = |s_p - 0| + |s_n - 1| (two L1Loss calls). Its ``margin`` argument
    (SOLVER.MARGIN) is stored but never used."""
    ap_ss, an_ss = _hard(_euclidean(feat_ss), target)
    ap_sp, an_sp = _hard(_euclidean(feat_sp.detach()), target)
    ap_sh, an_sh = _hard(_euclidean(feat_sh.detach()), target)
    s_p = ap_ss.max() / (ap_ss.max() + ap_sp.max().detach() + ap_sh.max().detach())
    s_n = an_ss.min() / (an_ss.min() + an_sp.min().detach() + an_sh.min().detach())
    return (s_p - 0).abs() + (s_n - 1).abs()


def loss_terms(outputs, target, direct=0, add_share=True, add_eloss=True, add_closs=True, id_w=0.25, tri_w=1.0,
               orth_loop=False):
    """Every term the official loop sums, by name, already weighted (``total`` adds them):

    - per head pair of ``cal_loss`` (``output[0:8]`` with ADD_SHARE, ``output[0:6]`` without; with
      ``direct`` the single pair): ``id_<head>`` = ID_LOSS_WEIGHT x label-smoothed CE(score),
      ``tri_<head>`` = TRIPLET_LOSS_WEIGHT x soft-margin batch-hard triplet(feature); the shared head's
      two terms x3. DEFECT: the ELOSS heads' scores (outputs 8, 10, 12) get no ID loss, so classifier_rs
      and bottleneck_rs.weight never receive a gradient;
    - ``orth`` (ADD_CLOSS) = 1.5 x ``orth_loss``; ``ratio`` (ADD_ELOSS) = 5.25 x ``ratio_loss``.

    Combinations the official loop cannot run raise (it fails with NameError / IndexError there):
    ADD_CLOSS or ADD_ELOSS without ADD_SHARE, and ADD_ELOSS with ``direct``."""
    if (add_closs or add_eloss) and not add_share:
        raise ValueError("official do_train needs MODEL.ADD_SHARE for ADD_CLOSS / ADD_ELOSS (NameError there)")
    if direct and add_eloss:
        raise ValueError("official do_train reads output[9] for ADD_ELOSS, which DIRECT=1 does not return")
    terms = OrderedDict()
    if direct:
        pairs = [("", outputs[0], outputs[1], 1)]
        half = outputs[1].shape[1] // 2
        ori_cls = outputs[1][:, :half] if add_share else outputs[1]
        ori_share = outputs[1][:, half:] if add_share else None
    else:
        pairs = [(m, outputs[2 * i], outputs[2 * i + 1], 1) for i, m in enumerate(MODALITIES)]
        if add_share:
            pairs.append(("shared", outputs[6], outputs[7], SHARED_HEAD_FACTOR))
        ori_cls = torch.cat([outputs[1], outputs[3], outputs[5]], -1)
        ori_share = outputs[7] if add_share else None
    for name, score, feat, factor in pairs:
        sfx = f"_{name}" if name else ""
        terms["id" + sfx] = factor * (id_w * cross_entropy_label_smooth(score, target))
        terms["tri" + sfx] = factor * (tri_w * soft_triplet(feat, target))
    if add_closs:
        terms["orth"] = ORTH_WEIGHT * (orth_loss_loop if orth_loop else orth_loss)(ori_cls, ori_share)
    if add_eloss:
        ss = torch.cat([outputs[9], outputs[11], outputs[13]], -1)
        terms["ratio"] = RATIO_WEIGHT * ratio_loss(ss, ori_cls, ori_share, target)
    return terms


def total(terms):
    return sum(terms.values())


# ----------------------------------------------------------------------------------------------------
# Evaluation (make_model.MDReID.forward in eval mode; engine/processor.py do_inference_mismatch)
# ----------------------------------------------------------------------------------------------------
def eval_features(sd, images, cams, heads, miss="nothing", add_share=True, global_local=False, sie_coe=1.0,
                  stride=None):
    """The official evaluation feature (``return_pattern`` is accepted and ignored by the official
    forward; the feature is taken before any BN neck and is unnormalised, the evaluator normalises).

    With ADD_SHARE only the present modalities are encoded (one stacked batch) and the feature is
    [g_m for present m] + [s_m for present m], e.g. 6d with all present, 4d with one missing, 2d with one
    present. Without ADD_SHARE the missing modalities' images are zeroed, all three are encoded and the
    feature is [g_R, g_N, g_T] (3d). With GLOBAL_LOCAL the mean is taken over the patch tokens only."""
    missing = MISSING.get(miss, ())
    if add_share:
        present = tuple(m for m in MODALITIES if m not in missing)
        cash, glob = _stacked(sd, images, present, cams, heads, sie_coe, stride)
        if global_local:
            glob = [_reduce(sd, m, g, _pool(c[:, 1:])) for m, g, c in zip(present, glob, cash)]
        return torch.cat(glob + [c[:, 0] for c in cash], -1)
    imgs = {m: torch.zeros_like(images[m]) if m in missing else images[m] for m in MODALITIES}
    cash, glob = _stacked(sd, imgs, MODALITIES, cams, heads, sie_coe, stride)
    if global_local:
        glob = [_reduce(sd, m, g, _pool(c)) for m, g, c in zip(MODALITIES, glob, cash)]
    return torch.cat(glob, -1)


def miss_type(present):
    """The TEST.MISS string for a set of present modalities (official names r, n, t, rn, rt, nt)."""
    present = set(present)
    if not present or not present <= set(MODALITIES):
        raise ValueError(f"present modalities must be a non-empty subset of {MODALITIES}, got {sorted(present)}")
    gone = tuple(m for m in MODALITIES if m not in present)
    return next((k for k, v in MISSING.items() if v == gone), "nothing")


def eval_features_present(sd, images, cams, heads, present, **kw):
    """``eval_features`` for the given present modalities (the official present-only rule)."""
    return eval_features(sd, images, cams, heads, miss=miss_type(present), **kw)


def id_to_miss(ids):
    """ID_to_MISS: modality ids (0 RGB, 1 NI, 2 TI) -> TEST.MISS. Pairs in either order, singletons;
    anything else (e.g. [0, 1, 2]) -> "nothing"."""
    key = tuple(int(i) for i in ids)
    table = {(1, 2): "r", (2, 1): "r", (0, 2): "n", (2, 0): "n", (0, 1): "t", (1, 0): "t",
             (2,): "rn", (1,): "rt", (0,): "nt"}
    return table.get(key, "nothing")


def transform_index(ids, feats, add_share=True):
    """transform_index / transform_index_org: meant to reorder the feature's chunks by the sorted ids. It
    acts only when the ids are strictly increasing, where the permutation (argsort of sorted ids) is the
    identity, so it always returns ``feats`` unchanged (DEFECT: a no-op; a query given as [2, 1] keeps the
    forward's R, N, T chunk order anyway)."""
    ids = torch.as_tensor(ids)
    if len(ids) > 1 and bool((ids[1:] > ids[:-1]).all()):
        order = torch.arange(len(ids))[torch.sort(ids).indices]
        n = len(ids) * (2 if add_share else 1)
        chunks = feats.chunk(n, dim=1)
        idx = [int(order[i % len(ids)]) + (i // len(ids)) * len(ids) for i in range(n)]
        return torch.cat([chunks[j] for j in idx], 1)
    return feats


def select_feature(query_ids, gallery_ids, q_feats, g_feats):
    """select_feature (ADD_SHARE any-to-any pairing). Equal id tensors: both features as they are. Else:
    the shared halves q_s, g_s; positions i where ``query_ids == gallery_ids`` elementwise (broadcast;
    a 3-vs-2 pair raises as in the official); for each such i the i-th of the 2·len chunks of each
    feature is put in front of the shared half; then the narrower of the two is padded with a copy of its
    own last columns to the other's width.

    DEFECT: the match is by position, not by modality, and a single-modality side broadcasts, so e.g.
    query [1, 2] (N, T) vs gallery [2] (T) pairs the query's g_T with the gallery's s_T; query [0, 2] vs
    gallery [1, 2] pairs g_T with g_T but [2, 0] vs [1, 2] pairs nothing; a one-modality query against a
    two-modality gallery matching at position 1 (e.g. [2] vs [0, 2]) raises IndexError in the official
    (``torch.arange(1)[1]``), and does here."""
    q_ids, g_ids = torch.as_tensor(query_ids), torch.as_tensor(gallery_ids)
    if torch.equal(q_ids, g_ids):
        return q_feats, g_feats
    q_s = q_feats[:, q_feats.shape[1] // 2:]
    g_s = g_feats[:, g_feats.shape[1] // 2:]
    common = torch.arange(len(q_ids))[torch.where(q_ids == g_ids)[0]]
    if len(common) > 0:
        q_chunks = q_feats.chunk(len(q_ids) * 2, dim=1)
        g_chunks = g_feats.chunk(len(g_ids) * 2, dim=1)
        q_r = torch.cat([torch.cat([q_chunks[int(i)] for i in common], 1), q_s], 1)
        g_r = torch.cat([torch.cat([g_chunks[int(i)] for i in common], 1), g_s], 1)
    else:
        q_r, g_r = q_s, g_s
    if q_r.shape[1] > g_r.shape[1]:
        d = q_r.shape[1] - g_r.shape[1]
        g_r = torch.cat([g_r, g_r[:, g_r.shape[1] - d:]], 1)
    if q_r.shape[1] < g_r.shape[1]:
        d = g_r.shape[1] - q_r.shape[1]
        q_r = torch.cat([q_r, q_r[:, q_r.shape[1] - d:]], 1)
    return q_r, g_r


def mismatch_features(sd, images, cams, heads, query_ids, gallery_ids, add_share=True, **kw):
    """One batch of ``do_inference_mismatch``: every sample encoded twice, once with the query's
    modalities and once with the gallery's (``model.miss_type`` switched), then transform_index and, with
    ADD_SHARE, select_feature. -> (query-side feature, gallery-side feature) of the same samples."""
    q = eval_features(sd, images, cams, heads, miss=id_to_miss(query_ids), add_share=add_share, **kw)
    g = eval_features(sd, images, cams, heads, miss=id_to_miss(gallery_ids), add_share=add_share, **kw)
    q, g = transform_index(query_ids, q, add_share), transform_index(gallery_ids, g, add_share)
    if add_share:
        q, g = select_feature(query_ids, gallery_ids, q, g)
    return q, g


def mismatch_distances(q_all, g_all, num_query, feat_norm=True):
    """``mismatch_compute``: both sides L2-normalised, the query rows ``q_all[:num_query]`` against the
    gallery rows ``g_all[num_query:]`` (the val loader holds query + gallery; for RGBNT201 both are the test
    folder), squared Euclidean distances with addmm. The evaluator's ``feat_norm`` is TEST.FEAT_NORM: the
    RGBNT201/RGBNT100 evaluator tests its truth (DEFECT: the string 'no' still normalises), the MSVR310 one
    compares with 'yes'."""
    if feat_norm:
        q_all, g_all = F.normalize(q_all, dim=1, p=2), F.normalize(g_all, dim=1, p=2)
    return euclidean_distance(q_all[:num_query], g_all[num_query:])


# ----------------------------------------------------------------------------------------------------
# Optimizer rules and LR schedule (solver/make_optimizer.py, solver/scheduler_factory.py)
# ----------------------------------------------------------------------------------------------------
def param_lr_wd(key, base_lr, transformer_type="ViT-B-16", add_share=True, frozen=False, bias_lr_factor=2.0,
                wd=1e-4, wd_bias=1e-4, large_fc_lr=False):
    """(lr, weight decay) ``make_optimizer`` gives the parameter named ``key`` (a name from
    ``optimizer_keys``), in its order of rules: bias -> BASE_LR x BIAS_LR_FACTOR with WEIGHT_DECAY_BIAS;
    "base" in the name (the CLIP tower; "adapter" excluded; not with MODEL.FROZEN, which in any case takes
    the whole tower out of the optimizer, see ``frozen_keys``) -> 5e-6 for ViT-B-16, else 0.8 x BASE_LR (lr
    only); LARGE_FC_LR -> classifiers 2 x BASE_LR; with ADD_SHARE, names containing "add_image_token" or
    "positional_embedding" -> BASE_LR (lr only). Note the ViT-B-16 rule overrides the bias rule's LR (tower
    biases: 5e-6, with WEIGHT_DECAY_BIAS), and the scheduler's warmup starts every group at 0.1 x BASE_LR,
    above the tower's 5e-6 target.

    DEFECT: ``add_image_token`` never reaches this rule: it is the class embedding's Parameter and
    named_parameters lists it as ``BACKBONE.base.class_embedding``, so the shared token trains at 5e-6
    like the tower; only the position embedding gets BASE_LR. ``BACKBONE.cv_embed`` (upper-case
    BACKBONE) is not "base": BASE_LR. There is no MSVR310 classifier rule (Signal's x100)."""
    lr, decay = base_lr, wd
    if "bias" in key:
        lr, decay = base_lr * bias_lr_factor, wd_bias
    if not frozen and "base" in key and "adapter" not in key:
        lr = 0.000005 if transformer_type == "ViT-B-16" else base_lr * 0.8
    if large_fc_lr and ("classifier" in key or "arcface" in key):
        lr = base_lr * 2
    if add_share and ("add_image_token" in key or "positional_embedding" in key):
        lr = base_lr
    return lr, decay


def mdreid_lr(group_lr, epoch, base_lr, max_epochs, warmup, transformer_type="ViT-B-16"):
    """The official scheduler (``create_scheduler``, timm-style CosineLRScheduler, stepped with the
    1-based epoch at each epoch's start; the same for all three datasets, no multi-step). ViT-B-16: Signal's
    ``cosine_lr`` exactly (warmup from the absolute 0.1 x BASE_LR, floor 0.001 x BASE_LR, seeded LR noise on
    epochs [0, MAX_EPOCHS)). Other backbones: warmup from 0.01 x BASE_LR and no noise."""
    if transformer_type == "ViT-B-16":
        return cosine_lr(group_lr, epoch, base_lr, max_epochs, warmup, noise=True)
    start, floor = 0.01 * base_lr, 0.001 * base_lr
    if epoch < warmup:
        return start + epoch * (group_lr - start) / warmup
    if epoch >= max_epochs:
        return floor
    return floor + 0.5 * (group_lr - floor) * (1 + math.cos(math.pi * epoch / max_epochs))


# ----------------------------------------------------------------------------------------------------
# The training engine (engine/processor.py do_train, solver/make_optimizer.py)
# ----------------------------------------------------------------------------------------------------
class OfficialTraining:
    """The official training step over an official-layout state dict: ``torch.optim.Adam`` (default
    betas/eps, coupled L2 weight decay) with one parameter group per trainable tensor in
    named_parameters order, LR and weight decay from ``param_lr_wd``; ``step`` is one iteration of the
    official loop on the CPU, where its autocast and GradScaler are inactive: zero_grad, forward, the
    summed loss, backward, optimizer step. ``add_image_token`` and ``class_embedding`` are one tensor.

    Args:
        sd: official-layout state dict (copied).
        heads: attention heads of the tower (official: width // 64).
        direct, add_share, add_eloss, add_closs, global_local: the official switches (defaults: the
            official configs/*/MDReID.yml).
        id_w, tri_w: MODEL.ID_LOSS_WEIGHT, MODEL.TRIPLET_LOSS_WEIGHT.
        base_lr, transformer_type, bias_lr_factor, wd, wd_bias, large_fc_lr: the optimizer recipe
            (SOLVER.BASE_LR, MODEL.TRANSFORMER_TYPE, SOLVER.BIAS_LR_FACTOR, WEIGHT_DECAY, WEIGHT_DECAY_BIAS,
            LARGE_FC_LR).
        frozen: MODEL.FROZEN (the whole CLIP tower frozen, see ``frozen_keys``).
        sie_coe: MODEL.SIE_COE; stride: MODEL.STRIDE_SIZE (default: the patch size).
    """

    def __init__(self, sd, heads, direct=0, add_share=True, add_eloss=True, add_closs=True, global_local=False,
                 id_w=0.25, tri_w=1.0, base_lr=3.5e-4, transformer_type="ViT-B-16", bias_lr_factor=2.0, wd=1e-4,
                 wd_bias=1e-4, sie_coe=1.0, stride=None, large_fc_lr=False, frozen=False):
        self.heads, self.sie_coe, self.stride = heads, sie_coe, stride
        self.switches = dict(direct=direct, add_share=add_share, add_eloss=add_eloss, global_local=global_local)
        self.loss_kw = dict(direct=direct, add_share=add_share, add_eloss=add_eloss, add_closs=add_closs,
                            id_w=id_w, tri_w=tri_w)
        self.base_lr, self.transformer_type = base_lr, transformer_type
        self.params = OrderedDict()
        for k, v in sd.items():  # the alias follows its target in the official order
            self.params[k] = self.params[TIED[k]] if k in TIED else v.detach().clone()
        self.trainable = optimizer_keys(self.params, frozen_backbone=frozen)
        for k in self.trainable:
            self.params[k].requires_grad_(True)
        self.rules = {k: param_lr_wd(k, base_lr, transformer_type, add_share, frozen, bias_lr_factor, wd, wd_bias,
                                     large_fc_lr) for k in self.trainable}
        self.optimizer = torch.optim.Adam([{"params": [self.params[k]], "lr": self.rules[k][0],
                                            "weight_decay": self.rules[k][1]} for k in self.trainable])

    def set_epoch(self, epoch, max_epochs=50, warmup=10):
        """``scheduler.step(epoch)`` (1-based epoch, at the start of each epoch)."""
        for k, group in zip(self.trainable, self.optimizer.param_groups):
            group["lr"] = mdreid_lr(self.rules[k][0], epoch, self.base_lr, max_epochs, warmup, self.transformer_type)

    def outputs(self, batch):
        return training_outputs(self.params, self.params, batch, batch["camid"], self.heads, sie_coe=self.sie_coe,
                                stride=self.stride, **self.switches)

    def loss_terms(self, batch):
        """Forward on ``batch`` (RGB/NI/TI images, pid, camid) -> the named, weighted loss terms."""
        return loss_terms(self.outputs(batch), batch["pid"], **self.loss_kw)

    def step(self, batch):
        """One iteration of the official loop; returns the loss."""
        self.optimizer.zero_grad()
        loss = total(self.loss_terms(batch))
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self):
        return OrderedDict((k, v.detach()) for k, v in self.params.items())

    def eval_features(self, images, cams, miss="nothing"):
        with torch.no_grad():
            return eval_features(self.params, images, cams, self.heads, miss=miss,
                                 add_share=self.switches["add_share"], global_local=self.switches["global_local"],
                                 sie_coe=self.sie_coe, stride=self.stride)
