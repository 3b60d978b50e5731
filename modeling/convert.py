"""Released backbone weights (OpenAI CLIP, timm ViT / EVA, OpenCLIP and Meta naming) as the timm modules'
state dicts, position embeddings resized to the input grid."""
from timm.models.eva import Eva
from timm.models.vision_transformer import checkpoint_filter_fn

from utils.checkpoint import strip_module_prefix


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
