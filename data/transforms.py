"""Image transforms for multi-modal samples (torchvision v2 + timm random erasing).

Train: resize, horizontal flip, pad, random crop, normalise, random erasing. Test: resize, normalise.
With ``shared=False`` (official recipe) each modality draws its own random parameters; with
``shared=True`` one draw (flip, crop, erased box) applies to every modality of a sample.
"""
import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2


class MultiModalTransform:
    def __init__(self, size, train, mean, std, flip_prob=0.5, padding=10, erase_prob=0.5, shared=False):
        size = tuple(int(s) for s in size)
        ops = [v2.ToImage(), v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
               v2.ToDtype(torch.float32, scale=True)]
        if train:
            ops += [v2.RandomHorizontalFlip(p=flip_prob), v2.Pad(padding), v2.RandomCrop(size)]
        ops.append(v2.Normalize(mean=list(mean), std=list(std)))
        self.pipeline = v2.Compose(ops)
        self.erase = RandomErasing(probability=erase_prob, mode="pixel", max_count=1, device="cpu") \
            if train and erase_prob > 0 else None
        self.shared = shared

    def __call__(self, images):
        """``images``: dict modality -> PIL image (in the dataset's order). Returns dict modality -> float
        tensor [3, H, W], in the same order."""
        names = list(images)
        if self.shared:
            out = self.pipeline(*(images[m] for m in names))
            out = dict(zip(names, out if isinstance(out, (tuple, list)) else (out,)))
            if self.erase is not None:
                stacked = self.erase(torch.cat([out[m] for m in names], 0))
                out = dict(zip(names, stacked.chunk(len(names), 0)))
            return out
        out = {}
        for m in names:
            t = self.pipeline(images[m])
            out[m] = self.erase(t) if self.erase is not None else t
        return out


def build_transforms(cfg, train):
    i = cfg.INPUT
    return MultiModalTransform(i.SIZE_TRAIN if train else i.SIZE_TEST, train, i.PIXEL_MEAN, i.PIXEL_STD,
                               flip_prob=i.PROB, padding=i.PADDING, erase_prob=i.RE_PROB,
                               shared=i.SHARED_AUG_PARAMS)
