"""Image transforms of multi-modal samples, in two halves.

In the loader (``ImageTransform.__call__``, run by the DataLoader workers on 8-bit images): resize to the
input size, and in training horizontal flip, zero padding and random crop, each an operation on uint8 pixels
in height x width x channel layout; training also draws the random-erasing box. The batch is collated as
uint8, a quarter of the bytes of float32.

On the device (``ImageTransform.to_device``, batched, on the CPU or CUDA): the copy of the batch, the
layout change to [B, 3, H, W], the conversion to float in [0, 1], normalisation and, in training, random
erasing with per-pixel standard-normal noise in the erased box.

The recipe's order is resize, flip, pad, crop, to float, normalise, erase. Flip, pad and crop move pixels and
the conversion and normalisation act on each pixel alone, so moving the float conversion after the crop
gives the same numbers bit for bit; the erasing boxes follow timm's ``RandomErasing`` (mode 'pixel', one box,
area 2% to 1/3, log-uniform aspect ratio 0.3 to 3.3, ten attempts).

Every random draw of a training sample comes from its own stream, ``random.Random(seed)`` with the seed the
P x K sampler gave the sample, in a fixed order (per modality: flip, crop offsets, erasing; one draw for all
modalities with ``shared=True``). The erasing noise of a batch is drawn on the device from one generator
seeded with its first sample's seed. A run's augmentation is therefore a function of the run's seed, the
epoch and the sample position alone, whatever the number of workers.
"""
import math
import random

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# timm's RandomErasing defaults, which the recipe uses (mode 'pixel', max_count 1).
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
ERASE_ATTEMPTS = 10


def resize(image, size):
    """``image`` (H x W x 3 uint8 array or tensor) at ``size`` = (h, w): bicubic with antialiasing on uint8
    pixels, as torchvision's Resize of an 8-bit image (a tensor); unchanged when it has that size already."""
    h, w = size
    if tuple(image.shape[:2]) == (h, w):
        return image
    chw = as_tensor(image).permute(2, 0, 1).contiguous()
    out = TF.resize(chw, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.permute(1, 2, 0)


def erase_box(rng, prob, h, w):
    """(top, left, height, width) of a random-erasing box drawn from ``rng``, (0, 0, 0, 0) when none: the
    algorithm of timm's RandomErasing with one box."""
    if rng.random() > prob:
        return 0, 0, 0, 0
    area = h * w
    for _ in range(ERASE_ATTEMPTS):
        target = rng.uniform(*ERASE_AREA) * area
        aspect = math.exp(rng.uniform(*ERASE_LOG_ASPECT))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if ew < w and eh < h:
            return rng.randint(0, h - eh), rng.randint(0, w - ew), eh, ew
    return 0, 0, 0, 0


def as_tensor(image):
    """An H x W x 3 uint8 array or tensor as a tensor (no copy unless the array is read-only)."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(image if image.flags.writeable else np.array(image))


def flip_pad_crop(image, flip, top, left, padding):
    """The [H, W, 3] window at (``top``, ``left``) of ``image`` (horizontally flipped when ``flip``) padded
    with ``padding`` zero pixels on every side, without building the padded image: a flipped window is the
    mirrored window of the unflipped image, flipped."""
    src = as_tensor(image)
    h, w = src.shape[:2]
    if flip:
        left = 2 * padding - left
    out = torch.zeros((h, w, 3), dtype=torch.uint8)
    y0, x0 = max(top, padding), max(left, padding)          # the window's overlap with the image, padded coords
    y1, x1 = min(top + h, padding + h), min(left + w, padding + w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = src[y0 - padding:y1 - padding, x0 - padding:x1 - padding]
    return torch.flip(out, [1]) if flip else out


class ImageTransform:
    """``size``: (h, w) input size; ``train``: flip / pad / crop / erase; ``mean``, ``std``: normalisation;
    ``flip_prob``, ``padding``, ``erase_prob``: the recipe's INPUT.PROB, INPUT.PADDING, INPUT.RE_PROB;
    ``shared``: one random draw for every modality of a sample (INPUT.SHARED_AUG_PARAMS)."""

    def __init__(self, size, train, mean, std, flip_prob=0.5, padding=10, erase_prob=0.5, shared=False):
        self.size = tuple(int(s) for s in size)
        self.train, self.shared = train, shared
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.flip_prob, self.padding, self.erase_prob = flip_prob, int(padding), erase_prob
        self._stats = {}  # device -> (mean, std) as [3, 1, 1] tensors

    def stats(self, device):
        """(mean, std) as [3, 1, 1] float32 tensors on ``device``, made once per device."""
        if device not in self._stats:
            self._stats[device] = tuple(torch.tensor(v, device=device).view(-1, 1, 1) for v in (self.mean, self.std))
        return self._stats[device]

    def draw(self, rng):
        """One modality's random parameters: (flip, top, left, erasing box)."""
        h, w = self.size
        flip = rng.random() < self.flip_prob
        top, left = rng.randint(0, 2 * self.padding), rng.randint(0, 2 * self.padding)
        box = erase_box(rng, self.erase_prob, h, w) if self.erase_prob > 0 else (0, 0, 0, 0)
        return flip, top, left, box

    def __call__(self, images, rng=None):
        """``images``: dict modality -> H x W x 3 uint8 array or tensor at the input size (``resize``). Returns dict
        modality -> uint8 tensor [H, W, 3]; in training also ``erase``: dict modality -> int32 [4] (the box's
        top, left, height, width; height 0 for none), with the random draws from ``rng`` (default: Python's
        global stream)."""
        if not self.train:
            return {m: as_tensor(a) for m, a in images.items()}
        rng = rng or random
        out, boxes, params = {}, {}, None
        for m, a in images.items():
            if params is None or not self.shared:
                params = self.draw(rng)
            flip, top, left, box = params
            out[m] = flip_pad_crop(a, flip, top, left, self.padding)
            boxes[m] = torch.tensor(box, dtype=torch.int32)
        out["erase"] = boxes
        return out

    def to_device(self, batch, modalities, device):
        """The model's input from a collated batch: dict modality -> float32 [B, 3, H, W] on ``device``,
        normalised, erased in training. Float images (a batch built by hand) are taken as normalised already
        and only moved."""
        images = {}
        erase = batch.get("erase") if self.train else None
        noise = None
        for m in modalities:
            x = batch[m].to(device, non_blocking=True)
            if x.dtype != torch.uint8:
                images[m] = x
                continue
            mean, std = self.stats(torch.device(device))
            x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)
            if erase is not None:
                if noise is None:
                    noise = torch.Generator(device=device)
                    noise.manual_seed(int(batch["seed"][0]) % 2 ** 63)
                x = erase_batch(x, erase[m], noise)
            images[m] = x
        return images


def erase_batch(x, boxes, generator):
    """``x`` [B, 3, H, W] with the pixels of each row's box (``boxes`` [B, 4] on the CPU: top, left, height,
    width) replaced by standard-normal noise drawn from ``generator`` (on x's device)."""
    rows = torch.nonzero(boxes[:, 2] > 0).flatten()
    if not len(rows):
        return x
    b = boxes[rows].to(x.device, non_blocking=True).long()
    top, left, bh, bw = (b[:, i].view(-1, 1, 1, 1) for i in range(4))
    _, c, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)
    noise = torch.randn((len(rows), c, h, w), generator=generator, device=x.device, dtype=x.dtype)
    rows = rows.to(x.device, non_blocking=True)
    x[rows] = torch.where(inside, noise, x[rows])
    return x


def build_transforms(cfg, train):
    i = cfg.INPUT
    return ImageTransform(i.SIZE_TRAIN if train else i.SIZE_TEST, train, i.PIXEL_MEAN, i.PIXEL_STD,
                          flip_prob=i.PROB, padding=i.PADDING, erase_prob=i.RE_PROB, shared=i.SHARED_AUG_PARAMS)
