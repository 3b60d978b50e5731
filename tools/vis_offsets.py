"""Where LAM samples: for each modality's deformable sampler, arrows from the reference cell centres
(green dots) to the learned sampling points (red heads), drawn on the image.

    python tools/vis_offsets.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output docs/offsets.png --num-samples 4
"""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from common import compose, encode_samples, label, load_everything, sample_images, samples_parser, save
from engine.setup import UsageError, run_cli  # noqa: E402


def to_pixels(yx, grid, size):
    """Normalised token coordinates (align_corners=True) -> pixel (x, y) of token centres."""
    H, W = grid
    h, w = size
    y = ((yx[..., 0] + 1) / 2 * (H - 1) + 0.5) * h / H
    x = ((yx[..., 1] + 1) / 2 * (W - 1) + 0.5) * w / W
    return np.stack([x, y], -1)


def arrow(d, p0, p1, color, head=5):
    d.line([tuple(p0), tuple(p1)], fill=color, width=2)
    ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    for s in (-0.5, 0.5):
        d.line([tuple(p1), (p1[0] - head * math.cos(ang + s), p1[1] - head * math.sin(ang + s))], fill=color, width=2)


def main():
    args = samples_parser(__doc__, scale=5).parse_intermixed_args()
    cfg, model, loader, nq, device = load_everything(args)
    if cfg.MODEL.METHOD != "Signal":
        raise UsageError(f"vis_offsets.py draws Signal's LAM offsets; MODEL.METHOD {cfg.MODEL.METHOD} has no LAM")
    if model.lam is None:
        raise UsageError("this config has no LAM (MODEL.SIGNAL.USE_LAM no)")
    idx, _, patches = encode_samples(model, loader, device, args.num_samples)
    with torch.no_grad():
        points = [s.sampling_points(x) for s, x in zip(model.lam.samplers.values(), model.lam.to_maps(patches))]
    grid = model.backbone.grid
    rows = []
    for r, i in enumerate(idx):
        tiles = []
        for m, (img, name) in enumerate(zip(sample_images(loader, i), model.modalities)):
            img = img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST)
            img = Image.blend(img, Image.new("RGB", img.size, "white"), 0.35)
            d = ImageDraw.Draw(img)
            pos, ref = (t[r].cpu().numpy() for t in points[m])
            size = (img.height, img.width)
            ref_px = to_pixels(np.clip(ref, -1, 1), grid, size)
            pos_px = to_pixels(pos, grid, size)
            for a, b in zip(ref_px.reshape(-1, 2), pos_px.reshape(-1, 2)):
                arrow(d, a, b, (220, 0, 0))
                d.ellipse((a[0] - 3, a[1] - 3, a[0] + 3, a[1] + 3), fill=(0, 160, 0))
            tiles.append(label(img, name))
        rows.append(tiles)
    out = compose(rows)
    mean_shift = np.mean([np.abs((pt[0] - pt[1].clamp(-1, 1)).cpu().numpy()).mean() for pt in points])
    print(f"mean |offset| in normalised coordinates: {mean_shift:.3f}")
    save(out, args.output)


if __name__ == "__main__":
    run_cli(main)
