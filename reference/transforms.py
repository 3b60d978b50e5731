"""The recipe's training and test transforms as one float32 pipeline on the CPU, per sample: resize, flip,
pad, random crop, to float, normalise, random erasing (timm's ``RandomErasing``, mode 'pixel', one box), the
order of the official code's ``T.Compose``. The library runs the same operations split between the loader
(uint8) and the device (``data.transforms``); the tests compare the two: the same pixels for the same flip
and crop, the same distribution of flips and erased boxes."""
import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2


class FloatTransform:
    """``images``: dict modality -> PIL image. Returns dict modality -> float tensor [3, H, W], each modality with
    its own random draws (or one for all with ``shared``), from torch's and Python's global streams."""

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
