"""A transcription of the official DeMo code (Wang, Liu, Zheng, Zhang, "DeMo: Decoupled Feature-Based Mixture of
Experts for Multi-Modal Object Re-Identification", AAAI 2025; github.com/924973292/DeMo, commit b4f323a
"initialization", 2025-03-09) in plain tensor operations over a state dict with the official model's
``state_dict()`` names, shapes and order. Used as the reference that tests compare a library implementation
against: the checkpoint layout, the training forward for every runnable combination of the official switches
(``MODEL.DIRECT``, ``HDM``, ``ATM``, ``GLOBAL_LOCAL``, ``HEAD``, ``SIE_CAMERA``), the loss terms the official loop
sums, the evaluation feature (``return_pattern`` 1/2/3, ``TEST.MISS``), the optimizer's parameter rules and the
LR schedule. It shares no code with the package under test and imports nothing from the official repository.

Where each part was read (all at commit b4f323a430b32e3a1637c3e7acb25868cb52e9cd):

- model, heads, train/eval forward, missing modalities: ``modeling/make_model.py`` (DeMo, l.13-179);
- backbone wrapper + SIE camera embedding: ``modeling/meta_arch.py`` (build_transformer, l.32-103);
- CLIP visual tower: ``modeling/clip/model.py`` (ResidualAttentionBlock l.168-230/387-403, VisionTransformer
  l.418-484, CLIP l.518-530 for ``heads = width // 64``, build_model/resize_pos_embed l.647-725);
- HDM / ATM (MoE): ``modeling/moe/AttnMOE.py`` (Expert l.24-35, ExpertHead l.38-47, CrossAttention l.50-68,
  MoM l.85-121, GeneralFusion l.124-224);
- losses: ``layers/make_loss.py`` l.13-80, ``layers/softmax_loss.py`` l.4-34, ``layers/triplet_loss.py``
  l.16-135; the loop that sums them: ``engine/processor.py`` l.50-80;
- evaluation: ``engine/processor.py`` l.120-131 / l.148-199 (do_inference), ``utils/metrics.py``;
- optimizer: ``solver/make_optimizer.py`` l.4-40; schedule: ``solver/scheduler_factory.py`` l.7-32,
  ``solver/cosine_lr.py`` l.17-94, ``solver/scheduler.py`` l.67-105;
- defaults and recipes: ``config/defaults.py``, ``configs/{RGBNT201,RGBNT100,MSVR310}/DeMo.yml``.

Backbone: every DeMo.yml sets ``MODEL.TRANSFORMER_TYPE: 'ViT-B-16'`` (CLIP ViT-B/16; the t2t / ImageNet ViT
paths of make_model.py are not used by DeMo and not transcribed). State-dict layout (official order)::

    BACKBONE.cv_embed                                   [num_cams, 1, 768]   (SIE_CAMERA; 768 hard-coded)
    BACKBONE.base.{class_embedding, positional_embedding, proj, conv1.weight, ln_pre.*,
                   transformer.resblocks.{i}.{attn.in_proj_*, attn.out_proj.*, ln_1.*, mlp.c_fc.*, mlp.c_proj.*,
                   ln_2.*}, ln_post.*}
    {rgb,nir,tir}_reduce.{0 (LayerNorm 2D), 1 (Linear 2D->D)}.*            (GLOBAL_LOCAL)
    generalFusion.{r,n,t,rn,rt,nt,rnt}_token            [1, 1, D]            (HDM)
    generalFusion.{r,n,t,rn,rt,nt,rnt}.{in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias} (HDM)
    generalFusion.moe.experts.{h}.expertHead.{e}.mlp.{0 (Linear D/H), 2 (BatchNorm1d D/H)}.*   (ATM)
    generalFusion.moe.gating_network.gate.{linear_re.0 (Linear 7D->D), linear_re.2 (BN D), q_, k_}.* (ATM)
    classifier_moe.weight [C, 7D], bottleneck_moe.*     (HDM or ATM)
    classifier.weight [C, 3D], bottleneck.*             (DIRECT=1)  | classifier_{r,n,t}, bottleneck_{r,n,t} (DIRECT=0)

D = 512 for ViT-B-16 (hard-coded ``feat_dim``), H = MODEL.HEAD; a small tower replaces 768/512 by ``width`` /
``out_dim``.

Official quirks reproduced (marked ``QUIRK`` in the code):

1. The three modalities go through the backbone in three separate calls (no stacking), each with the same
   camera labels; the camera embedding ``SIE_COE * cv_embed[cam]`` is added to the CLS token only, before the
   position embedding.
2. ``GeneralFusion.forward`` always runs ``forward_HDM``: ``ATM=True, HDM=False`` fails in the official code
   (AttributeError ``r_token``); here it raises ValueError. ``HDM`` alone returns the 7 HDM tokens concatenated
   (7D, no MoE); ``HDM + ATM`` returns the MoM output (also 7D).
3. The HDM attentions are ``nn.MultiheadAttention(D, D // 64, dropout=0.1)`` (sequence-first) called with the
   default ``need_weights=True``: attention-weight dropout 0.1 is active in training, so the training forward
   is stochastic. This transcription calls ``F.multi_head_attention_forward`` with the same arguments in the
   same order (r, n, t, rn, rt, nt, rnt), so under the same torch RNG state its dropout masks are the official
   ones bit for bit. The HDM query token's key/value sequence is [global; patch tokens] of each modality in the
   branch (R, N, T order), the global being the reduced one under GLOBAL_LOCAL.
4. The HDM outputs are ``.permute(1, 2, 0).squeeze()``: for a batch of one they are 1-D; MoM and the HDM-only
   eval path unsqueeze them back (the HDM-only training path would fail in BatchNorm, as in the official).
5. MoM: the gate is a one-query cross-attention with H heads: query = BN(QuickGELU(Linear(cat of the 7
   features))), keys = the 7 features (no value; ``q_``/``k_`` without bias, scale (D/H)^-0.5), softmax over the
   7 experts per head. Head i's expert e is Linear(D/H) -> QuickGELU -> BatchNorm1d on the i-th D/H chunk of
   feature e, scaled by its gate; the output is laid out [feature e][head i][D/H] (flatten of (B, 7, D)).
   ``reg_weight=0``: the returned ``loss_moe`` is the Python int 0 (``0 * 0``).
6. BN-neck biases (``bottleneck*.bias``, ``bottleneck_moe.bias``) are frozen; ``bottleneck_t`` is not passed
   to ``weights_init_kaiming`` (no effect: BatchNorm's default init is the same). The BatchNorms inside MoM and
   the expert MLPs are trainable (bias included) and all use batch statistics in training.
7. Loss (engine/processor.py l.65-77): the outputs are consumed in (score, feature) pairs; when their count is
   odd the last entry (``loss_moe`` = 0) is added as is. Each pair: ID_LOSS_WEIGHT x label-smoothed CE (eps
   0.1, ``CrossEntropyLabelSmooth``) + TRIPLET_LOSS_WEIGHT x soft-margin batch-hard triplet (``NO_MARGIN``
   default True: ``SoftMarginLoss(d_an - d_ap)``). Features are taken before the BN neck. No other loss.
8. Evaluation returns unnormalised pre-BN features: ``return_pattern`` 1 -> ori = [g_R, g_N, g_T] (3D);
   2 -> moe (7D); 3 -> [ori, moe] (10D; ``test_net.py`` and the checkpoint selection use 3); without HDM/ATM
   always ori. ``TEST.MISS`` in {r, n, t, rn, rt, nt} zeroes those modalities' *images* (after
   normalisation) and still encodes all three; any other value (configs: "nothing", default "None") is
   the full-modality test. The missing-modality setting exists only at test time.
9. Optimizer: one Adam group per trainable tensor in ``named_parameters`` order; "bias" in the name ->
   BASE_LR x BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS; for ViT-B-16 every name containing "base" (the CLIP tower,
   biases included) -> 5e-6 (``MODEL.FROZEN``: the tower is frozen instead, via lora_train); the HDM tokens,
   HDM attentions, MoE, reducers, heads and ``BACKBONE.cv_embed`` (upper-case) train at BASE_LR. Weight
   decay 1e-4 on everything (tokens, LayerNorm, BN weights included). ``LARGE_FC_LR`` (default off) -> 2 x
   BASE_LR on classifiers.
10. Schedule: timm-style CosineLRScheduler stepped at the start of each 1-based epoch; warmup from the
    *absolute* 0.1 x BASE_LR (so the tower's 5e-6 groups warm *down* from 3.5e-5), floor 0.001 x BASE_LR for
    every group, ``cycle_limit=1`` so epoch MAX_EPOCHS (the last one trained) runs at the floor for all groups;
    LR noise (seed 42 + epoch, |n| < 0.67, lr x (1 + n)) on epochs [0, MAX_EPOCHS).
11. On the CPU the loop's ``amp.autocast`` / ``GradScaler`` are inactive (plain fp32 step); on a GPU the
    official loop trains in fp16 autocast with loss scaling, which this transcription does not model.
12. Some gradients are analytically zero and numerically float noise (~1e-8): the key third of every attention
    ``in_proj_bias`` (softmax over keys is shift-invariant), and biases that only shift a feature by a
    per-batch constant before a BN neck + triplet (the HDM ``out_proj`` biases with ATM off; ``ln_post.bias``
    with DIRECT=1 and neither GLOBAL_LOCAL nor HDM/ATM). Adam (eps 1e-8) turns that noise into updates of up
    to ~lr of either sign, so an optimizer-step comparison must mask those entries (the official run itself
    is not reproducible there across devices).
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F

# The same loss functions and timm's seeded LR noise as Signal's code (the shared skeleton)
from reference.official import cross_entropy_label_smooth, lr_noise, soft_triplet  # noqa: F401

MODALITIES = ("RGB", "NI", "TI")
TOWER = "BACKBONE.base."
CAM = "BACKBONE.cv_embed"
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
FUSION = "generalFusion."
MOE = FUSION + "moe."
GATE = MOE + "gating_network.gate."
# the seven HDM branches (GeneralFusion.forward_HDM) and the modalities whose tokens each attends to
HDM_BRANCHES = (("r", ("RGB",)), ("n", ("NI",)), ("t", ("TI",)), ("rn", ("RGB", "NI")), ("rt", ("RGB", "TI")),
                ("nt", ("NI", "TI")), ("rnt", ("RGB", "NI", "TI")))
NUM_EXPERTS = 7  # hard-coded in DeMo.__init__ (GeneralFusion(num_experts=7))
HDM_DROPOUT = 0.1  # GeneralFusion(dropout=0.1) -> nn.MultiheadAttention(dropout=0.1)
_REDUCE = {"RGB": "rgb_reduce", "NI": "nir_reduce", "TI": "tir_reduce"}
_HEAD_SUFFIX = {"RGB": "r", "NI": "n", "TI": "t"}
# TEST.MISS -> the modalities whose images are zeroed (any other string: none)
MISSING = {"r": ("RGB",), "n": ("NI",), "t": ("TI",), "rn": ("RGB", "NI"), "rt": ("RGB", "TI"), "nt": ("NI", "TI")}

# configs/*/DeMo.yml (MODEL / SOLVER), over config/defaults.py
RECIPES = {
    "RGBNT201": dict(direct=1, hdm=True, atm=True, global_local=True, moe_head=4, sie_coe=1.0, id_w=0.25,
                     tri_w=1.0, base_lr=3.5e-4, max_epochs=50, warmup=10, size=(256, 128), ims_per_batch=64,
                     num_instance=8),
    "RGBNT100": dict(direct=0, hdm=True, atm=True, global_local=True, moe_head=8, sie_coe=1.0, id_w=0.25,
                     tri_w=1.0, base_lr=3.5e-4, max_epochs=30, warmup=5, size=(128, 256), ims_per_batch=128,
                     num_instance=16),
    "MSVR310": dict(direct=0, hdm=True, atm=True, global_local=True, moe_head=8, sie_coe=1.0, id_w=0.25,
                    tri_w=1.0, base_lr=3.5e-4, max_epochs=50, warmup=10, size=(128, 256), ims_per_batch=64,
                    num_instance=4),
}
# the model switches training_outputs / eval_features take, with the RGBNT201 recipe as default
DEFAULT_SWITCHES = dict(direct=1, hdm=True, atm=True, global_local=True, moe_head=4)


# ----------------------------------------------------------------------------------------------------
# State dict: keys, shapes, random weights
# ----------------------------------------------------------------------------------------------------
def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def random_official_state(num_classes=5, num_cams=3, width=96, depth=4, patch=8, out_dim=64, size=(32, 16),
                          seed=0, stride=None, direct=1, hdm=True, atm=True, global_local=True, moe_head=4,
                          sie_camera=True):
    """A random state dict with the official DeMo model's keys, shapes and order (its ``state_dict()``) for a
    CLIP-style ViT of the given size. The official code hard-codes two widths a tiny tower must replace: the
    camera embedding ``[num_cams, 1, 768]`` (here ``width``) and ``feat_dim = 512`` (here ``out_dim``). The
    position embedding has ``(H // stride) * (W // stride) + 1`` rows (official ``h_resolution`` /
    ``w_resolution``; with stride < patch the official tower fails, so use stride = patch). ``out_dim`` must be
    divisible by ``moe_head`` (ATM) and by 64's quotient (HDM: ``out_dim // 64`` heads, at least 1).

    Values are random (not the official init) so that every path is exercised; buffers are positive/finite.
    Trainable: everything except ``frozen_keys``; buffers: ``buffer_keys``."""
    if atm and out_dim % moe_head:
        raise ValueError("out_dim must be divisible by moe_head (torch.chunk in MoM)")
    if hdm and (out_dim // 64 < 1 or out_dim % (out_dim // 64)):
        raise ValueError("HDM needs out_dim >= 64 and divisible by out_dim // 64 attention heads")
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=1.0: torch.randn(*s, generator=g) * std
    sh, sw = _pair(stride or patch)
    D, W = out_dim, width
    sd = OrderedDict()

    def bn(name, dim, bias_std=0.1):
        sd[name + ".weight"] = 1 + r(dim, std=0.1)
        sd[name + ".bias"] = r(dim, std=bias_std)
        sd[name + ".running_mean"] = r(dim, std=0.1)
        sd[name + ".running_var"] = 1 + torch.rand(dim, generator=g) * 0.5
        sd[name + ".num_batches_tracked"] = torch.tensor(0)

    def linear(name, o, i, bias=True):
        sd[name + ".weight"] = r(o, i, std=i ** -0.5)
        if bias:
            sd[name + ".bias"] = r(o, std=0.02)

    def mha(name, dim):
        sd[name + ".in_proj_weight"] = r(3 * dim, dim, std=dim ** -0.5)
        sd[name + ".in_proj_bias"] = r(3 * dim, std=0.02)
        sd[name + ".out_proj.weight"] = r(dim, dim, std=dim ** -0.5)
        sd[name + ".out_proj.bias"] = r(dim, std=0.02)

    def ln(name, dim):
        sd[name + ".weight"], sd[name + ".bias"] = 1 + r(dim, std=0.1), r(dim, std=0.1)

    # build_transformer: own Parameter cv_embed first, then the child ``base`` (VisionTransformer: own
    # Parameters class_embedding, positional_embedding, proj, then conv1, ln_pre, transformer, ln_post)
    if sie_camera:
        sd[CAM] = r(num_cams, 1, W, std=0.02)
    sd[TOWER + "class_embedding"] = r(W, std=W ** -0.5)
    sd[TOWER + "positional_embedding"] = r((size[0] // sh) * (size[1] // sw) + 1, W, std=W ** -0.5)
    sd[TOWER + "proj"] = r(W, D, std=W ** -0.5)
    sd[TOWER + "conv1.weight"] = r(W, 3, patch, patch, std=(3 * patch * patch) ** -0.5)
    ln(TOWER + "ln_pre", W)
    for i in range(depth):
        b = f"{TOWER}transformer.resblocks.{i}."
        mha(b + "attn", W)
        ln(b + "ln_1", W)
        linear(b + "mlp.c_fc", 4 * W, W)
        linear(b + "mlp.c_proj", W, 4 * W)
        ln(b + "ln_2", W)
    ln(TOWER + "ln_post", W)
    if global_local:
        for m in MODALITIES:  # LayerNorm(2D) -> Linear(2D, D) -> QuickGELU
            ln(_REDUCE[m] + ".0", 2 * D)
            linear(_REDUCE[m] + ".1", D, 2 * D)
    if hdm or atm:
        if hdm:
            for name, _ in HDM_BRANCHES:
                sd[f"{FUSION}{name}_token"] = r(1, 1, D, std=D ** -0.5)
            for name, _ in HDM_BRANCHES:
                mha(FUSION + name, D)
        if atm:
            hd = D // moe_head
            for h in range(moe_head):
                for e in range(NUM_EXPERTS):
                    p = f"{MOE}experts.{h}.expertHead.{e}.mlp."
                    linear(p + "0", hd, hd)
                    bn(p + "2", hd)
            linear(GATE + "linear_re.0", D, NUM_EXPERTS * D)
            bn(GATE + "linear_re.2", D)
            linear(GATE + "q_", D, D, bias=False)
            linear(GATE + "k_", D, D, bias=False)
        sd["classifier_moe.weight"] = r(num_classes, NUM_EXPERTS * D, std=0.05)  # official init normal(0.001)
        bn("bottleneck_moe", NUM_EXPERTS * D)
    if direct:
        sd["classifier.weight"] = r(num_classes, 3 * D, std=0.05)
        bn("bottleneck", 3 * D)
    else:
        for s in ("r", "n", "t"):
            sd[f"classifier_{s}.weight"] = r(num_classes, D, std=0.05)
            bn(f"bottleneck_{s}", D)
    return sd


def frozen_keys(sd, frozen_backbone=False):
    """Parameters with ``requires_grad=False`` in the official model: the BN-neck biases (``bottleneck``,
    ``bottleneck_{r,n,t}``, ``bottleneck_moe``; not the BatchNorms inside the MoE), and with ``MODEL.FROZEN``
    every ``BACKBONE.base.*`` parameter (``mark_only_lora_as_trainable``: all names without "adapter")."""
    out = []
    for k in sd:
        if k.endswith(BUFFER_SUFFIXES):
            continue
        neck = k.split(".")[0] in ("bottleneck", "bottleneck_r", "bottleneck_n", "bottleneck_t", "bottleneck_moe")
        if (neck and k.endswith(".bias")) or (frozen_backbone and k.startswith(TOWER) and "adapter" not in k):
            out.append(k)
    return out


def buffer_keys(sd):
    return [k for k in sd if k.endswith(BUFFER_SUFFIXES)]


def optimizer_keys(sd, frozen_backbone=False):
    """The names ``make_optimizer`` sees, in ``model.named_parameters()`` order (= state-dict order without
    buffers and frozen parameters; DeMo has no tied parameters)."""
    frozen = set(frozen_keys(sd, frozen_backbone))
    return [k for k in sd if not k.endswith(BUFFER_SUFFIXES) and k not in frozen]


def resize_pos_embed(posemb, grid):
    """``build_model``'s resize of the CLIP position embedding (clip/model.py l.708-725): row 0 kept, the square
    grid bilinearly resized (align_corners=False) to ``grid`` = (H // stride, W // stride), flattened row-major."""
    token, rest = posemb[:1], posemb[1:]
    gs = int(math.sqrt(len(rest)))
    rest = rest.reshape(1, gs, gs, -1).permute(0, 3, 1, 2)
    rest = F.interpolate(rest, size=tuple(grid), mode="bilinear")
    rest = rest.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([token, rest.squeeze()], 0)


def clip_to_official(clip_sd, grid):
    """The ``BACKBONE.base.*`` entries the official ``build_model`` makes from an OpenAI CLIP state dict
    (``visual.*`` keys; the text tower is dropped): fp32 (``convert_weights`` casts to float), position
    embedding resized to ``grid``. ``cv_embed`` and everything outside the tower keep their random init."""
    out = OrderedDict()
    for k, v in clip_sd.items():
        if k.startswith("visual."):
            out[TOWER + k[len("visual."):]] = v.float().clone()
    out[TOWER + "positional_embedding"] = resize_pos_embed(out[TOWER + "positional_embedding"], grid)
    return out


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------
def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _bn(sd, buffers, name, x, training):
    """BatchNorm1d (eps 1e-5, momentum 0.1). Training: batch statistics, running statistics (unbiased variance)
    and ``num_batches_tracked`` updated in ``buffers``; eval: running statistics from ``sd``."""
    if training:
        y = F.batch_norm(x, buffers[name + ".running_mean"], buffers[name + ".running_var"], sd[name + ".weight"],
                         sd[name + ".bias"], training=True, momentum=0.1, eps=1e-5)
        with torch.no_grad():
            buffers[name + ".num_batches_tracked"].add_(1)
        return y
    return F.batch_norm(x, sd[name + ".running_mean"], sd[name + ".running_var"], sd[name + ".weight"],
                        sd[name + ".bias"], training=False, momentum=0.1, eps=1e-5)


def backbone(sd, x, cam, heads, sie_coe=1.0, stride=None):
    """build_transformer.forward + the CLIP VisionTransformer on one modality's batch: patch conv (stride
    MODEL.STRIDE_SIZE), ``[CLS, patches]``, the camera embedding ``sie_coe * cv_embed[cam]`` added to the CLS
    token (iff the state dict has ``cv_embed``: SIE_CAMERA), + position embedding, ln_pre, pre-norm blocks
    (sequence-first MHA without dropout, QuickGELU MLP), ln_post and the projection on every token.
    -> (patch tokens [B, N, D], CLS token [B, D])."""
    f = {k[len(TOWER):]: v for k, v in sd.items() if k.startswith(TOWER)}
    conv = f["conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = len({k.split(".")[2] for k in f if k.startswith("transformer.resblocks.")})
    t = F.conv2d(x, conv, stride=_pair(stride or patch)).flatten(2).transpose(1, 2)
    B = t.shape[0]
    cls = f["class_embedding"] + torch.zeros(B, 1, width, dtype=t.dtype)
    t = torch.cat([cls, t], 1)
    if CAM in sd:
        # QUIRK 1: added in place to the CLS row only (x[:, 0] = x[:, 0] + cv_emb.squeeze(1))
        t = torch.cat([t[:, :1] + (sie_coe * sd[CAM][cam]).reshape(B, 1, width), t[:, 1:]], 1)
    t = t + f["positional_embedding"]
    t = F.layer_norm(t, (width,), f["ln_pre.weight"], f["ln_pre.bias"]).permute(1, 0, 2)
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        h = F.layer_norm(t, (width,), f[b + "ln_1.weight"], f[b + "ln_1.bias"])
        t = t + F.multi_head_attention_forward(h, h, h, width, heads, f[b + "attn.in_proj_weight"],
                                               f[b + "attn.in_proj_bias"], None, None, False, 0.0,
                                               f[b + "attn.out_proj.weight"], f[b + "attn.out_proj.bias"],
                                               need_weights=False)[0]
        h = F.layer_norm(t, (width,), f[b + "ln_2.weight"], f[b + "ln_2.bias"])
        h = quick_gelu(F.linear(h, f[b + "mlp.c_fc.weight"], f[b + "mlp.c_fc.bias"]))
        t = t + F.linear(h, f[b + "mlp.c_proj.weight"], f[b + "mlp.c_proj.bias"])
    t = F.layer_norm(t.permute(1, 0, 2), (width,), f["ln_post.weight"], f["ln_post.bias"]) @ f["proj"]
    return t[:, 1:], t[:, 0]


def _reduce(sd, m, g, cash):
    """GLOBAL_LOCAL (PIFE): LayerNorm(2D) -> Linear(2D, D) -> QuickGELU on [CLS ; mean of the patch tokens]."""
    p = _REDUCE[m]
    h = torch.cat([g, F.adaptive_avg_pool1d(cash.permute(0, 2, 1), 1).squeeze(-1)], -1)
    h = F.layer_norm(h, (h.shape[-1],), sd[p + ".0.weight"], sd[p + ".0.bias"])
    return quick_gelu(F.linear(h, sd[p + ".1.weight"], sd[p + ".1.bias"]))


def encode(sd, images, cams, heads, global_local=True, sie_coe=1.0, stride=None):
    """The three backbone calls (QUIRK 1: one per modality, R, N, T) and the optional reducers.
    -> (dict of patch tokens, dict of global features)."""
    cash, glob = {}, {}
    for m in MODALITIES:
        cash[m], glob[m] = backbone(sd, images[m], cams, heads, sie_coe, stride)
    if global_local:
        glob = {m: _reduce(sd, m, glob[m], cash[m]) for m in MODALITIES}
    return cash, glob


def hdm_tokens(sd, cash, glob, training, dropout=HDM_DROPOUT):
    """GeneralFusion.forward_HDM: per branch b in (r, n, t, rn, rt, nt, rnt) the learnable token b attends
    (one query, ``D // 64`` heads, sequence-first) over the concatenated [global; patches] sequences of the
    branch's modalities. QUIRK 3: attention dropout ``dropout`` in training (need_weights=True path);
    QUIRK 4: ``.squeeze()``. -> the 7 outputs [B, D] (or [D] for a batch of one)."""
    D = glob["RGB"].shape[-1]
    nh = D // 64
    seq = {m: torch.cat([glob[m].unsqueeze(1).permute(1, 0, 2), cash[m].permute(1, 0, 2)], 0) for m in MODALITIES}
    B = seq["RGB"].shape[1]
    outs = []
    for name, mods in HDM_BRANCHES:
        kv = seq[mods[0]] if len(mods) == 1 else torch.cat([seq[m] for m in mods], 0)
        q = sd[f"{FUSION}{name}_token"].repeat(1, B, 1)
        p = FUSION + name
        o = F.multi_head_attention_forward(q, kv, kv, D, nh, sd[p + ".in_proj_weight"], sd[p + ".in_proj_bias"],
                                           None, None, False, dropout, sd[p + ".out_proj.weight"],
                                           sd[p + ".out_proj.bias"], training=training, need_weights=True)[0]
        outs.append(o.permute(1, 2, 0).squeeze())
    return outs


def mom(sd, buffers, xs, head, training):
    """MoM (ATM, QUIRK 5). xs: the 7 HDM features. -> [B, 7D] laid out [feature e][head i][D / head]."""
    if xs[0].dim() == 1:
        xs = [x.unsqueeze(0) for x in xs]
    chunks = [torch.chunk(x, head, dim=-1) for x in xs]
    query = torch.cat(xs, -1)
    key = torch.stack(xs, 1)
    B, N, C = key.shape
    h = quick_gelu(F.linear(query, sd[GATE + "linear_re.0.weight"], sd[GATE + "linear_re.0.bias"]))
    h = _bn(sd, buffers, GATE + "linear_re.2", h, training)
    q = F.linear(h, sd[GATE + "q_.weight"]).reshape(B, 1, head, C // head).permute(0, 2, 1, 3)
    k = F.linear(key, sd[GATE + "k_.weight"]).reshape(B, N, head, C // head).permute(0, 2, 1, 3)
    gates = ((q @ k.transpose(-2, -1)) * (C // head) ** -0.5).softmax(dim=-1)  # [B, head, 1, 7]
    outs = []
    for i in range(head):
        eo = []
        for e in range(len(xs)):
            p = f"{MOE}experts.{i}.expertHead.{e}.mlp."
            y = quick_gelu(F.linear(chunks[e][i], sd[p + "0.weight"], sd[p + "0.bias"]))
            eo.append(_bn(sd, buffers, p + "2", y, training))
        outs.append(torch.stack(eo, 1) * gates[:, i].squeeze(1).unsqueeze(2))
    return torch.cat(outs, -1).flatten(start_dim=1, end_dim=-1)


def fusion(sd, buffers, cash, glob, training, hdm_on=True, atm_on=True, moe_head=4, dropout=HDM_DROPOUT):
    """GeneralFusion.forward (QUIRK 2). -> the 7D MoE feature (ATM) or the 7 HDM tokens concatenated."""
    if atm_on and not hdm_on:
        raise ValueError("official GeneralFusion.forward always runs forward_HDM: ATM without HDM fails there "
                         "(AttributeError: no r_token)")
    xs = hdm_tokens(sd, cash, glob, training, dropout)
    if atm_on:
        return mom(sd, buffers, xs, moe_head, training)
    feat = torch.cat(xs, -1)
    if not training and feat.dim() == 1:
        feat = feat.unsqueeze(0)
    return feat


def _head(sd, buffers, neck, fc, feat):
    return F.linear(_bn(sd, buffers, neck, feat, True), sd[fc + ".weight"])


# ----------------------------------------------------------------------------------------------------
# Training forward (make_model.DeMo.forward, training branch)
# ----------------------------------------------------------------------------------------------------
def training_outputs(sd, buffers, images, cams, heads, direct=1, hdm=True, atm=True, global_local=True,
                     moe_head=4, sie_coe=1.0, stride=None, dropout=HDM_DROPOUT):
    """The official training forward: exactly the flat tuple ``DeMo.forward`` returns in training.

    - HDM or ATM, DIRECT=1: ``(moe_score, moe_feat, ori_score, ori, loss_moe)``
    - HDM or ATM, DIRECT=0: ``(moe_score, moe_feat, score_R, g_R, score_N, g_N, score_T, g_T, loss_moe)``
    - neither, DIRECT=1: ``(ori_score, ori)``; DIRECT=0: ``(score_R, g_R, score_N, g_N, score_T, g_T)``

    g_m: the CLS feature of modality m (GLOBAL_LOCAL: reduced [CLS ; mean patch]); ori = [g_R, g_N, g_T];
    moe_feat: ``fusion``; scores through BN neck (train mode) + bias-free classifier; ``loss_moe`` is the int 0.
    ``heads``: attention heads of the tower (official ``width // 64``). ``buffers`` (usually ``sd`` itself)
    receives the BN running statistics. ``dropout``: the HDM attention dropout (official 0.1; it draws from the
    global torch RNG in the official order)."""
    cash, glob = encode(sd, images, cams, heads, global_local, sie_coe, stride)
    out = []
    if hdm or atm:
        moe_feat = fusion(sd, buffers, cash, glob, True, hdm, atm, moe_head, dropout)
        out += [_head(sd, buffers, "bottleneck_moe", "classifier_moe", moe_feat), moe_feat]
    if direct:
        ori = torch.cat([glob[m] for m in MODALITIES], -1)
        out += [_head(sd, buffers, "bottleneck", "classifier", ori), ori]
    else:
        for m in MODALITIES:
            s = _HEAD_SUFFIX[m]
            out += [_head(sd, buffers, f"bottleneck_{s}", f"classifier_{s}", glob[m]), glob[m]]
    if hdm or atm:
        out.append(0)  # QUIRK 5: loss_moe = reg_weight (0) * 0
    return tuple(out)


def output_names(direct=1, hdm=True, atm=True, **_):
    """Names of the entries ``training_outputs`` returns, in order."""
    names = ["score_moe", "feat_moe"] if (hdm or atm) else []
    if direct:
        names += ["score_ori", "feat_ori"]
    else:
        for m in MODALITIES:
            names += [f"score_{m}", f"feat_{m}"]
    if hdm or atm:
        names.append("loss_moe")
    return names


# ----------------------------------------------------------------------------------------------------
# Losses (layers/make_loss.py, softmax_loss.py, triplet_loss.py; engine/processor.py do_train)
# ----------------------------------------------------------------------------------------------------
def _pair_names(n_pairs):
    return {1: ["ori"], 2: ["moe", "ori"], 3: ["RGB", "NI", "TI"], 4: ["moe", "RGB", "NI", "TI"]}[n_pairs]


def loss_terms(outputs, target, id_w=0.25, tri_w=1.0, label_smooth=True, **_):
    """Every term the official loop sums, by name, already weighted (``total`` adds them). The structure is
    read off ``outputs`` as the official loop does (QUIRK 7): pairs (score, feature), and with an odd count the
    last entry added as is. Per pair ``<name>`` (moe, ori, RGB, NI, TI): ``id_<name>`` = ID_LOSS_WEIGHT x
    label-smoothed CE (plain CE with IF_LABELSMOOTH off), ``tri_<name>`` = TRIPLET_LOSS_WEIGHT x soft triplet;
    ``moe_reg`` = ``outputs[-1]`` (0). Defaults: the DeMo.yml weights (0.25, 1.0)."""
    n = len(outputs) - (len(outputs) % 2)
    terms = OrderedDict()
    for name, i in zip(_pair_names(n // 2), range(0, n, 2)):
        score, feat = outputs[i], outputs[i + 1]
        ce = cross_entropy_label_smooth(score, target) if label_smooth else F.cross_entropy(score, target)
        terms[f"id_{name}"] = id_w * ce
        terms[f"tri_{name}"] = tri_w * soft_triplet(feat, target)
    if len(outputs) % 2:
        terms["moe_reg"] = torch.as_tensor(float(outputs[-1]))
    return terms


def total(terms):
    return sum(terms.values())


# ----------------------------------------------------------------------------------------------------
# Evaluation (make_model.DeMo.forward, eval branch; engine/processor.py do_inference / training_neat_eval)
# ----------------------------------------------------------------------------------------------------
def eval_features(sd, images, cams, heads, miss="nothing", return_pattern=3, direct=1, hdm=True, atm=True,
                  global_local=True, moe_head=4, sie_coe=1.0, stride=None):
    """The official evaluation feature (QUIRK 8), unnormalised (the evaluator L2-normalises with
    TEST.FEAT_NORM): images of the modalities named by ``miss`` (TEST.MISS) are replaced by zeros, all three
    are encoded; ori = [g_R, g_N, g_T]; with HDM/ATM ``return_pattern`` 1 -> ori, 2 -> moe, 3 -> [ori, moe]
    (any other value -> ori); without them always ori. BatchNorms use running statistics, no dropout.
    ``direct`` is accepted and has no effect (the heads are not used at test time)."""
    gone = MISSING.get(miss, ())
    imgs = {m: torch.zeros_like(images[m]) if m in gone else images[m] for m in MODALITIES}
    cash, glob = encode(sd, imgs, cams, heads, global_local, sie_coe, stride)
    ori = torch.cat([glob[m] for m in MODALITIES], -1)
    if hdm or atm:
        moe = fusion(sd, sd, cash, glob, False, hdm, atm, moe_head)
        if return_pattern == 1:
            return ori
        if return_pattern == 2:
            return moe
        if return_pattern == 3:
            return torch.cat([ori, moe], -1)
    return ori


def distances(feats, num_query, feat_norm=True):
    """R1_mAP_eval.compute (RGBNT201 / RGBNT100): features L2-normalised when ``feat_norm`` is truthy (QUIRK:
    the string 'no' is truthy; the MSVR310 evaluator R1_mAP compares with 'yes'), query rows ``[:num_query]``
    against gallery rows ``[num_query:]`` (the val loader holds query + gallery), squared Euclidean via addmm."""
    if feat_norm:
        feats = F.normalize(feats, dim=1, p=2)
    qf, gf = feats[:num_query], feats[num_query:]
    m, n = qf.shape[0], gf.shape[0]
    d = qf.pow(2).sum(1, keepdim=True).expand(m, n) + gf.pow(2).sum(1, keepdim=True).expand(n, m).t()
    return d.addmm_(qf, gf.t(), beta=1, alpha=-2).cpu().numpy()


# ----------------------------------------------------------------------------------------------------
# Optimizer rules and LR schedule (solver/make_optimizer.py, solver/scheduler_factory.py, cosine_lr.py)
# ----------------------------------------------------------------------------------------------------
def param_lr_wd(key, base_lr=3.5e-4, transformer_type="ViT-B-16", frozen=False, bias_lr_factor=2.0, wd=1e-4,
                wd_bias=1e-4, large_fc_lr=False):
    """(lr, weight decay) ``make_optimizer`` gives the parameter named ``key`` (a name from ``optimizer_keys``),
    in its order of rules (QUIRK 9): "bias" -> BASE_LR x BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS; then (not
    MODEL.FROZEN) "base" in the name and "adapter" not -> 5e-6 for ViT-B-16, else 0.8 x BASE_LR (lr only);
    then LARGE_FC_LR: "classifier"/"arcface" -> 2 x BASE_LR."""
    lr, decay = base_lr, wd
    if "bias" in key:
        lr, decay = base_lr * bias_lr_factor, wd_bias
    if not frozen and "base" in key and "adapter" not in key:
        lr = 0.000005 if transformer_type == "ViT-B-16" else base_lr * 0.8
    if large_fc_lr and ("classifier" in key or "arcface" in key):
        lr = base_lr * 2
    return lr, decay


def demo_lr(group_lr, epoch, base_lr=3.5e-4, max_epochs=50, warmup=10, noise=True):
    """The LR of a group whose ``make_optimizer`` LR is ``group_lr`` after ``scheduler.step(epoch)`` (QUIRK 10):
    create_scheduler's CosineLRScheduler(t_initial=MAX_EPOCHS, lr_min=0.001 BASE_LR, warmup_lr_init=0.1 BASE_LR,
    warmup_t=WARMUP_ITERS, cycle_limit=1, t_in_epochs, noise_range (0, MAX_EPOCHS), noise_pct 0.67, seed 42).
    The official loop calls it with epoch = 1 .. MAX_EPOCHS at the start of each epoch; before the first call
    (scheduler construction) every group is at warmup_lr_init when warmup > 0."""
    start, floor = 0.1 * base_lr, 0.001 * base_lr
    if epoch < warmup:
        lr = start + epoch * (group_lr - start) / warmup
    elif epoch >= max_epochs:  # i = epoch // t_initial >= cycle_limit
        lr = floor
    else:
        lr = floor + 0.5 * (group_lr - floor) * (1 + math.cos(math.pi * epoch / max_epochs))
    if noise and 0 <= epoch < max_epochs:
        lr = lr + lr * lr_noise(epoch)
    return lr


# ----------------------------------------------------------------------------------------------------
# The training engine (engine/processor.py do_train, solver/make_optimizer.py)
# ----------------------------------------------------------------------------------------------------
class OfficialTraining:
    """The official training step over an official-layout state dict: ``torch.optim.Adam`` (SOLVER.OPTIMIZER_NAME
    'Adam', default betas/eps, coupled L2 weight decay) with one parameter group per trainable tensor in
    named_parameters order, LR and weight decay from ``param_lr_wd``; ``step`` is one iteration of the official
    loop on the CPU, where its autocast and GradScaler are inactive: zero_grad, forward (train mode: BN batch
    statistics, HDM dropout from the global torch RNG), the summed loss, backward, optimizer step.

    Args:
        sd: official-layout state dict (copied).
        heads: attention heads of the tower (official: width // 64).
        direct, hdm, atm, global_local, moe_head: the official switches (defaults: configs/RGBNT201/DeMo.yml).
        id_w, tri_w: MODEL.ID_LOSS_WEIGHT, MODEL.TRIPLET_LOSS_WEIGHT.
        base_lr, transformer_type, bias_lr_factor, wd, wd_bias, frozen, large_fc_lr: the optimizer recipe.
        max_epochs, warmup: SOLVER.MAX_EPOCHS, SOLVER.WARMUP_ITERS (for ``set_epoch``).
        sie_coe: MODEL.SIE_COE; stride: MODEL.STRIDE_SIZE (default: the patch size).
    """

    def __init__(self, sd, heads, direct=1, hdm=True, atm=True, global_local=True, moe_head=4, id_w=0.25, tri_w=1.0,
                 base_lr=3.5e-4, transformer_type="ViT-B-16", bias_lr_factor=2.0, wd=1e-4, wd_bias=1e-4, frozen=False,
                 large_fc_lr=False, max_epochs=50, warmup=10, sie_coe=1.0, stride=None, dropout=HDM_DROPOUT):
        self.heads = heads
        self.switches = dict(direct=direct, hdm=hdm, atm=atm, global_local=global_local, moe_head=moe_head,
                             sie_coe=sie_coe, stride=stride)
        self.dropout = dropout
        self.loss_kw = dict(id_w=id_w, tri_w=tri_w)
        self.base_lr, self.max_epochs, self.warmup = base_lr, max_epochs, warmup
        self.params = OrderedDict((k, v.detach().clone()) for k, v in sd.items())
        self.trainable = optimizer_keys(self.params, frozen)
        for k in self.trainable:
            self.params[k].requires_grad_(True)
        self.rules = {k: param_lr_wd(k, base_lr, transformer_type, frozen, bias_lr_factor, wd, wd_bias, large_fc_lr)
                      for k in self.trainable}
        self.optimizer = torch.optim.Adam([{"params": [self.params[k]], "lr": self.rules[k][0],
                                            "weight_decay": self.rules[k][1]} for k in self.trainable])

    def set_epoch(self, epoch):
        """``scheduler.step(epoch)`` (1-based epoch, at the start of each epoch)."""
        for k, group in zip(self.trainable, self.optimizer.param_groups):
            group["lr"] = demo_lr(self.rules[k][0], epoch, self.base_lr, self.max_epochs, self.warmup)

    def outputs(self, batch):
        return training_outputs(self.params, self.params, batch, batch["camid"], self.heads, dropout=self.dropout,
                                **self.switches)

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

    def eval_features(self, images, cams, miss="nothing", return_pattern=3):
        with torch.no_grad():
            return eval_features(self.params, images, cams, self.heads, miss=miss, return_pattern=return_pattern,
                                 **self.switches)
