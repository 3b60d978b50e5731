"""The ViT encoder shared by the three modalities (timm VisionTransformer + SIE camera embedding), and the
backbone specs (``BackboneSpec``): each MODEL.TRANSFORMER_TYPE registered once with how it is built, its LR
rule, its checkpoint conversion and whether it is small; any timm ViT / EVA02 name has one generic spec.

Registered:
  * ``ViT-B-16``: the CLIP ViT-B/16 visual tower (pre-norm, QuickGELU); its final LayerNorm and
    projection are applied to every token, giving 512-d class and patch tokens.
  * ``vit_base_patch16_224``: ImageNet ViT-B/16, 768-d tokens, no projection.
  * ``vit_custom``: a small CLIP-style ViT trained from scratch (demo, tests).
"""
import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import timm
import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint

from utils.registry import Registry

from .convert import convert_official_vit_state, convert_timm_state


class _QuickGELUFunction(torch.autograd.Function):
    """x * sigmoid(1.702 x) with a hand-written backward (same values as autograd's graph). Only the input
    is kept for the backward, which recomputes the sigmoid: one MLP-sized activation per block less in
    memory than autograd's graph of three elementwise ops, which keeps both x and the sigmoid."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.mul(1.702).sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = x.mul(1.702).sigmoid_()
        # d/dx [x s(1.702 x)] = s (1 + 1.702 x (1 - s))
        return torch.rsub(s, 1).mul_(x).mul_(1.702).add_(1).mul_(s).mul_(grad)


class QuickGELU(nn.Module):
    def forward(self, x):
        return _QuickGELUFunction.apply(x)


def _use_fast_quick_gelu(vit):
    from timm.layers.activations import QuickGELU as TimmQuickGELU
    for blk in vit.blocks:
        if isinstance(getattr(getattr(blk, "mlp", None), "act", None), TimmQuickGELU):
            blk.mlp.act = QuickGELU()


# timm model families a backbone may come from: the plain ViT (CLIP, ImageNet, DINOv2) and Eva (EVA02,
# DINOv3: rotary position embeddings, register tokens).
TIMM_FAMILIES = ("vit_", "eva02_")


def timm_backbone_names():
    """timm model names usable as MODEL.TRANSFORMER_TYPE: ViT-style models with a class token."""
    return [n for n in timm.list_models() if n.startswith(TIMM_FAMILIES)]


def _patch_from_name(name):
    """The patch size written in a timm name ('..._patch14_...' -> 14; 16 when absent)."""
    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else 16


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the project asks of a backbone (MODEL.TRANSFORMER_TYPE), in one place.

    Args:
        name: the MODEL.TRANSFORMER_TYPE value.
        create: ``create(img_size, drop_path, drop, attn_drop, model_cfg)`` -> the network body: a module with
            ``blocks`` (and ``num_prefix_tokens`` for tools/vis_cam.py); the encoder keeps it as ``.vit``, whose
            parameters get the backbone LR and per-block layer decay.
        encoder: ``encoder(body, num_cameras, sie_coe)`` -> the module Signal calls, an ``Encoder`` subclass
            (its contract: ``forward(x, cam_label) -> (class token [B, D], patch tokens [B, N, D])``, ``grid``,
            ``out_dim``); None: ``ViTBackbone`` (a timm ViT or Eva body).
        patch_size: ``patch_size(model_cfg)`` -> pixels per patch side.
        official_lr: ``official_lr(solver_cfg)`` -> the backbone LR of the official rule (SOLVER.BACKBONE_LR -1);
            None: the config must set SOLVER.BACKBONE_LR.
        convert: ``convert(state, body)`` -> a released checkpoint as the body's state dict (position
            embeddings resized); None: the backbone takes no MODEL.PRETRAIN_PATH.
        small: trains on the CPU in minutes: no device guard, no warning about random initial weights.
        official: the authors' code has this backbone (tools/benchmark.py --official).
    """
    name: str
    create: Callable
    encoder: Optional[Callable] = None
    patch_size: Optional[Callable] = None
    official_lr: Optional[Callable] = None
    convert: Optional[Callable] = convert_timm_state
    small: bool = False
    official: bool = False

    def __post_init__(self):
        if self.patch_size is None:
            object.__setattr__(self, "patch_size", lambda model_cfg: _patch_from_name(self.name))


_BACKBONES = Registry("backbone")


def register_backbone(spec):
    """Register ``spec`` under ``spec.name``; returns it."""
    return _BACKBONES.register(spec.name, spec, getattr(spec.create, "__module__", None))


def backbone_names():
    """The registered backbone names (any timm ViT / EVA02 name is accepted besides)."""
    return _BACKBONES.names()


def backbone_spec(name):
    """The spec of backbone ``name``: a registered one, else any timm ViT / EVA02 model name (one generic
    spec: timm's layout, its checkpoint conversion, an explicit SOLVER.BACKBONE_LR)."""
    spec = _BACKBONES.get(name)
    if spec is not None:
        return spec
    if name.startswith(TIMM_FAMILIES) and name in timm_backbone_names():
        return BackboneSpec(name, partial(_timm_body, name))
    raise ValueError(f"config: MODEL.TRANSFORMER_TYPE must be {', '.join(backbone_names())} or a timm ViT / EVA02 model "
                     f"name (e.g. vit_base_patch16_dinov3, vit_base_patch14_dinov2, eva02_base_patch16_clip_224), "
                     f"got {name!r}")


def _common(img_size, drop_path, drop, attn_drop):
    return dict(img_size=tuple(img_size), drop_path_rate=drop_path, drop_rate=drop, attn_drop_rate=attn_drop)


def _timm_body(name, img_size, drop_path=0.0, drop=0.0, attn_drop=0.0, model_cfg=None):
    vit = timm.create_model(name, pretrained=False, num_classes=0, **_common(img_size, drop_path, drop, attn_drop))
    if getattr(vit, "cls_token", None) is None:
        raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} has no class token; Signal needs one")
    return vit


def _clip_body(img_size, drop_path=0.0, drop=0.0, attn_drop=0.0, model_cfg=None):
    vit = _timm_body("vit_base_patch16_clip_quickgelu_224", img_size, drop_path, drop, attn_drop)
    vit.head = nn.Linear(vit.embed_dim, 512, bias=False)
    return vit


def _small_body(img_size, drop_path=0.0, drop=0.0, attn_drop=0.0, model_cfg=None):
    c = model_cfg.CUSTOM_VIT
    vit = VisionTransformer(patch_size=c.PATCH_SIZE, embed_dim=c.EMBED_DIM, depth=c.DEPTH, num_heads=c.NUM_HEADS,
                            pre_norm=True, num_classes=0, act_layer="quick_gelu",
                            norm_layer=partial(nn.LayerNorm, eps=1e-5), **_common(img_size, drop_path, drop, attn_drop))
    if c.OUT_DIM:
        vit.head = nn.Linear(vit.embed_dim, c.OUT_DIM, bias=False)
    return vit


def _base_lr_rule(solver):
    return solver.BASE_LR * solver.BACKBONE_LR_FACTOR


# The three backbones of the official code and recipe: their checkpoints' position embeddings are resized
# bilinearly without antialias as the official code does (timm-named backbones keep timm's resampling).
register_backbone(BackboneSpec("ViT-B-16", _clip_body, official_lr=lambda solver: 5e-6,
                               convert=convert_official_vit_state, official=True))
register_backbone(BackboneSpec("vit_base_patch16_224", partial(_timm_body, "vit_base_patch16_224"),
                               official_lr=_base_lr_rule, convert=convert_official_vit_state))
register_backbone(BackboneSpec("vit_custom", _small_body, patch_size=lambda model_cfg: model_cfg.CUSTOM_VIT.PATCH_SIZE,
                               official_lr=_base_lr_rule, convert=convert_official_vit_state, small=True,
                               official=True))


def create_vit(name, img_size, drop_path=0.0, drop=0.0, attn_drop=0.0, model_cfg=None):
    """The network body of backbone ``name`` at input size ``img_size`` = (H, W); ``model_cfg`` (the MODEL
    section) sizes the small ViT. The body records its spec (``signal_spec``: how its checkpoints convert)."""
    spec = backbone_spec(name)
    vit = spec.create(img_size, drop_path, drop, attn_drop, model_cfg)
    vit.signal_spec = spec
    _use_fast_quick_gelu(vit)
    return vit


def build_backbone(cfg, num_cameras):
    """The encoder of MODEL.TRANSFORMER_TYPE for ``num_cameras`` cameras (0 or MODEL.SIE_CAMERA no: no SIE)."""
    m = cfg.MODEL
    spec = backbone_spec(m.TRANSFORMER_TYPE)
    body = create_vit(m.TRANSFORMER_TYPE, cfg.INPUT.SIZE_TRAIN, m.DROP_PATH, m.DROP_OUT, m.ATT_DROP_RATE, m)
    encoder = (spec.encoder or ViTBackbone)(body, num_cameras if m.SIE_CAMERA else 0, m.SIE_COE)
    encoder.set_fused_attn(m.FUSED_ATTN)
    encoder.grad_checkpointing = m.GRAD_CHECKPOINT
    return encoder


class Encoder(nn.Module):
    """What Signal calls to encode one image batch: ``forward(x, cam_label) -> (class token [B, D], patch
    tokens [B, N, D])``, shared by the three modalities.

    Subclasses set ``grid`` (patch rows, columns) and ``out_dim`` (D) and implement ``forward``. This base
    holds the network body as ``vit`` (its parameters get the backbone LR; its ``blocks``, the per-layer
    decay), the SIE camera table (``camera``, following ``camera_mode``) and ``grad_checkpointing``
    (MODEL.GRAD_CHECKPOINT: each block's activations recomputed in the backward, ``run_blocks``).

    ``accepts_extra_tokens``: whether ``forward`` also takes ``extra_tokens``, tokens a method places right
    after the class token (MDReID's shared token): ``ViTBackbone`` for a plain ViT (``simple``), see its
    ``forward``.

    Args:
        vit: the network body.
        width: width of the class token the camera embedding is added to.
        num_cameras: rows of the camera table; 0 disables SIE.
        sie_coe: scale of the camera embedding.
    """

    def __init__(self, vit: nn.Module, width: int, num_cameras: int = 0, sie_coe: float = 1.0):
        super().__init__()
        self.vit = vit
        self.sie_coe = sie_coe
        self.camera_mode = "index"
        self.grad_checkpointing = False
        self.accepts_extra_tokens = False
        if num_cameras > 0:
            self.cam_embed = nn.Parameter(torch.zeros(num_cameras, 1, width))
            trunc_normal_(self.cam_embed, std=0.02)
        else:
            self.cam_embed = None

    def camera_embedding(self, cam_label):
        """Rows of the camera table for ``cam_label`` [B] -> [B, 1, width]. ``camera_mode`` 'index' takes each
        camera's row, and the table's mean for ids beyond it (cameras the model was not trained with);
        'mean' gives every sample the mean row (TEST.CAMERA_EMBEDDING)."""
        table = self.cam_embed
        if self.camera_mode == "mean":
            return table.mean(0, keepdim=True).expand(cam_label.shape[0], -1, -1)
        if self.camera_mode != "index":
            raise ValueError(f"camera_mode must be 'index' or 'mean', got {self.camera_mode!r}")
        unseen = cam_label >= len(table)
        rows = table[cam_label.clamp(max=len(table) - 1)]
        return torch.where(unseen[:, None, None], table.mean(0, keepdim=True), rows)

    def camera(self, cam_label):
        """The scaled camera embedding to add to the class token [B, 1, width]."""
        if cam_label is None:
            raise ValueError("cam_label is required: the model uses the SIE camera embedding (MODEL.SIE_CAMERA)")
        return self.sie_coe * self.camera_embedding(cam_label)

    def run_blocks(self, x, **kwargs):
        """``x`` through every block of ``vit.blocks``, checkpointed per block when ``grad_checkpointing``."""
        for blk in self.vit.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False, **kwargs)
            else:
                x = blk(x, **kwargs)
        return x

    def set_fused_attn(self, enabled: bool):
        """MODEL.FUSED_ATTN: F.scaled_dot_product_attention in the body where it has the switch."""
        for blk in self.vit.blocks:
            if hasattr(getattr(blk, "attn", None), "fused_attn"):
                blk.attn.fused_attn = enabled


class ViTBackbone(Encoder):
    """The encoder of a timm VisionTransformer or Eva body.

    The SIE camera embedding (a learned ``[num_cameras, 1, width]`` table, scaled by ``sie_coe``) is added
    to the class token before the position embedding. The final norm and ``vit.head`` (CLIP projection
    or identity) are applied to every token.

    Args:
        vit: a timm VisionTransformer with a class token and ``num_classes=0`` (head = projection or Identity).
        num_cameras: rows of the camera table; 0 disables SIE.
        sie_coe: scale of the camera embedding.
    """

    def __init__(self, vit: VisionTransformer, num_cameras: int = 0, sie_coe: float = 1.0):
        super().__init__(vit, vit.embed_dim, num_cameras, sie_coe)
        self.grid = tuple(vit.patch_embed.grid_size)
        self.out_dim = vit.head.out_features if isinstance(vit.head, nn.Linear) else vit.embed_dim
        # a plain ViT whose position embedding covers [class, patches] (CLIP, ImageNet, the small ViT)
        self.simple = (not isinstance(vit, Eva) and vit.num_prefix_tokens == 1 and not vit.no_embed_class
                       and vit.pos_embed is not None and not getattr(vit, "dynamic_img_size", False))
        self.accepts_extra_tokens = self.simple

    def forward(self, x, cam_label=None, extra_tokens=None):
        """x: [B, 3, H, W] -> (class token [B, D], patch tokens [B, N, D]). Register tokens, where the
        backbone has them, are neither: they are dropped from the output.

        ``extra_tokens`` ([B or 1, E, width], plain ViTs only: ``accepts_extra_tokens``): tokens placed right
        after the class token once the position embedding is on the class and patch tokens (they bring their
        own positions), then encoded with them; the second output is then [B, E + N, D], the E extra tokens
        first."""
        v = self.vit
        if x.dtype == torch.uint8:
            raise TypeError(f"the model got uint8 images {list(x.shape)}: the loaders deliver 8-bit [B, H, W, 3] "
                            f"batches that data.to_device(loader, batch, modalities, device) normalises into the "
                            f"model's float [B, 3, H, W] input")
        if extra_tokens is not None and not self.accepts_extra_tokens:
            raise ValueError(f"extra_tokens need a plain ViT whose position embedding covers [class, patches]; "
                             f"this {type(v).__name__} body has other prefix tokens or positions")
        x = v.patch_embed(x)
        rope = None
        if self.simple:
            # class token + camera, then the learned position embedding over [class, patches]
            cls = v.cls_token.expand(x.shape[0], -1, -1)
            if self.cam_embed is not None:
                cls = cls + self.camera(cam_label)
            x = torch.cat([cls, x], dim=1) + v.pos_embed
            if extra_tokens is not None:
                x = torch.cat([x[:, :1], extra_tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
            x = v.pos_drop(x)
        else:
            # the backbone's own prefix tokens and positions (registers, rotary embeddings); the camera is
            # added to the class token as it enters the blocks
            x = v._pos_embed(x)
            if isinstance(x, tuple):
                x, rope = x
            if self.cam_embed is not None:
                x = torch.cat([x[:, :1] + self.camera(cam_label), x[:, 1:]], dim=1)
            if isinstance(v, VisionTransformer):
                x = v.patch_drop(x)
        x = v.norm_pre(x)
        x = self.run_blocks(x, **({} if rope is None and not isinstance(v, Eva) else {"rope": rope}))
        x = v.head(v.norm(x))
        return x[:, 0], x[:, v.num_prefix_tokens:]
