"""The ViT encoder shared by the three modalities (timm VisionTransformer + SIE camera embedding).

Variants:
  * ``ViT-B-16``: the CLIP ViT-B/16 visual tower (pre-norm, QuickGELU); its final LayerNorm and
    projection are applied to every token, giving 512-d class and patch tokens.
  * ``vit_base_patch16_224``: ImageNet ViT-B/16, 768-d tokens, no projection.
  * ``vit_custom``: a small CLIP-style ViT trained from scratch (demo, tests).
"""
from functools import partial

import timm
import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch.utils.checkpoint import checkpoint


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
        if isinstance(getattr(blk.mlp, "act", None), TimmQuickGELU):
            blk.mlp.act = QuickGELU()


# timm model families a backbone may come from: the plain ViT (CLIP, ImageNet, DINOv2) and Eva (EVA02,
# DINOv3: rotary position embeddings, register tokens).
TIMM_FAMILIES = ("vit_", "eva02_")


def timm_backbone_names():
    """timm model names usable as MODEL.TRANSFORMER_TYPE: ViT-style models with a class token."""
    return [n for n in timm.list_models() if n.startswith(TIMM_FAMILIES)]


def patch_size_of(name, custom_patch=16):
    """The patch size of backbone ``name`` (read from the timm name, e.g. 14 for '..._patch14_...')."""
    import re
    if name == "vit_custom":
        return custom_patch
    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else 16


def create_vit(name, img_size, drop_path=0.0, drop=0.0, attn_drop=0.0, custom=None):
    """Build the timm VisionTransformer for ``name`` at input size ``img_size`` = (H, W)."""
    common = dict(img_size=tuple(img_size), drop_path_rate=drop_path, drop_rate=drop, attn_drop_rate=attn_drop)
    if name == "ViT-B-16":
        vit = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, num_classes=0, **common)
        vit.head = nn.Linear(vit.embed_dim, 512, bias=False)
    elif name == "vit_base_patch16_224":
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **common)
    elif name == "vit_custom":
        c = custom
        vit = VisionTransformer(patch_size=c["PATCH_SIZE"], embed_dim=c["EMBED_DIM"], depth=c["DEPTH"],
                                num_heads=c["NUM_HEADS"], pre_norm=True, num_classes=0, act_layer="quick_gelu",
                                norm_layer=partial(nn.LayerNorm, eps=1e-5), **common)
        if c["OUT_DIM"]:
            vit.head = nn.Linear(vit.embed_dim, c["OUT_DIM"], bias=False)
    elif name.startswith(TIMM_FAMILIES) and name in timm.list_models():
        vit = timm.create_model(name, pretrained=False, num_classes=0, **common)
        if getattr(vit, "cls_token", None) is None:
            raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} has no class token; Signal needs one")
    else:
        raise ValueError(f"MODEL.TRANSFORMER_TYPE: unknown backbone {name!r}; expected ViT-B-16, "
                         f"vit_base_patch16_224, vit_custom or a timm ViT / EVA name (e.g. vit_base_patch16_dinov3, "
                         f"vit_base_patch14_dinov2, eva02_base_patch16_clip_224)")
    # the official recipe resizes position embeddings bilinearly without antialias; timm-named backbones
    # keep timm's own resampling (bicubic, antialiased)
    vit.signal_bilinear_pos_embed = name in ("ViT-B-16", "vit_base_patch16_224", "vit_custom")
    _use_fast_quick_gelu(vit)
    return vit


class ViTBackbone(nn.Module):
    """Encodes one image batch into class and patch tokens.

    The SIE camera embedding (a learned ``[num_cameras, 1, width]`` table, scaled by ``sie_coe``) is added
    to the class token before the position embedding. The final norm and ``vit.head`` (CLIP projection
    or identity) are applied to every token.

    Args:
        vit: a timm VisionTransformer with a class token and ``num_classes=0`` (head = projection or Identity).
        num_cameras: rows of the camera table; 0 disables SIE.
        sie_coe: scale of the camera embedding.
    """

    def __init__(self, vit: VisionTransformer, num_cameras: int = 0, sie_coe: float = 1.0):
        super().__init__()
        self.vit = vit
        self.grid = tuple(vit.patch_embed.grid_size)
        self.out_dim = vit.head.out_features if isinstance(vit.head, nn.Linear) else vit.embed_dim
        self.sie_coe = sie_coe
        self.camera_mode = "index"
        # per-block activation checkpointing (MODEL.GRAD_CHECKPOINT): each block's activations are recomputed
        # in the backward instead of kept from the forward
        self.grad_checkpointing = False
        # a plain ViT whose position embedding covers [class, patches] (CLIP, ImageNet, the small ViT)
        self.simple = (not isinstance(vit, Eva) and vit.num_prefix_tokens == 1 and not vit.no_embed_class
                       and vit.pos_embed is not None and not getattr(vit, "dynamic_img_size", False))
        if num_cameras > 0:
            self.cam_embed = nn.Parameter(torch.zeros(num_cameras, 1, vit.embed_dim))
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

    def set_fused_attn(self, enabled: bool):
        for blk in self.vit.blocks:
            blk.attn.fused_attn = enabled

    def _camera(self, cam_label):
        if cam_label is None:
            raise ValueError("cam_label is required: the model uses the SIE camera embedding (MODEL.SIE_CAMERA)")
        return self.sie_coe * self.camera_embedding(cam_label)

    def forward(self, x, cam_label=None):
        """x: [B, 3, H, W] -> (class token [B, D], patch tokens [B, N, D]). Register tokens, where the
        backbone has them, are neither: they are dropped from the output."""
        v = self.vit
        x = v.patch_embed(x)
        rope = None
        if self.simple:
            # class token + camera, then the learned position embedding over [class, patches]
            cls = v.cls_token.expand(x.shape[0], -1, -1)
            if self.cam_embed is not None:
                cls = cls + self._camera(cam_label)
            x = v.pos_drop(torch.cat([cls, x], dim=1) + v.pos_embed)
        else:
            # the backbone's own prefix tokens and positions (registers, rotary embeddings); the camera is
            # added to the class token as it enters the blocks
            x = v._pos_embed(x)
            if isinstance(x, tuple):
                x, rope = x
            if self.cam_embed is not None:
                x = torch.cat([x[:, :1] + self._camera(cam_label), x[:, 1:]], dim=1)
            if isinstance(v, VisionTransformer):
                x = v.patch_drop(x)
        x = v.norm_pre(x)
        kwargs = {} if rope is None and not isinstance(v, Eva) else {"rope": rope}
        for blk in v.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False, **kwargs)
            else:
                x = blk(x, **kwargs)
        x = v.head(v.norm(x))
        return x[:, 0], x[:, v.num_prefix_tokens:]
