"""Which patches SIM keeps: per modality, patches kept by the intra-modal rule (blue), by the
inter-modal rule (orange) or by both (magenta) are outlined and tinted; the rest are dimmed.

    python tools/vis_tokens.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output docs/tokens.png --num-samples 4
"""
import numpy as np
import torch
from PIL import Image, ImageDraw

from common import compose, encode_samples, label, load_everything, sample_images, samples_parser, save
from engine.setup import UsageError, run_cli  # noqa: E402

COLORS = {"intra": (40, 90, 255), "inter": (255, 140, 0), "both": (230, 0, 200)}


def overlay(img, intra, inter, grid, scale):
    H, W = grid
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    ph, pw = img.height / H, img.width / W
    base = np.asarray(img).astype(np.float32)
    dim = base * 0.35
    out = dim.copy()
    marks = []
    for i in range(H):
        for j in range(W):
            a, b = bool(intra[i, j]), bool(inter[i, j])
            if not (a or b):
                continue
            kind = "both" if a and b else ("intra" if a else "inter")
            y0, y1, x0, x1 = int(i * ph), int((i + 1) * ph), int(j * pw), int((j + 1) * pw)
            out[y0:y1, x0:x1] = 0.75 * base[y0:y1, x0:x1] + 0.25 * np.array(COLORS[kind])
            marks.append((x0, y0, x1 - 1, y1 - 1, kind))
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for x0, y0, x1, y1, kind in marks:
        d.rectangle((x0, y0, x1, y1), outline=COLORS[kind])
    return img


def main():
    args = samples_parser(__doc__, scale=4).parse_intermixed_args()
    cfg, model, loader, nq, device = load_everything(args)
    if cfg.MODEL.METHOD != "Signal":
        raise UsageError(f"vis_tokens.py draws Signal's SIM token selection; MODEL.METHOD {cfg.MODEL.METHOD} has "
                         f"no SIM")
    if model.sim is None:
        raise UsageError("this config has no SIM (MODEL.SIGNAL.USE_SIM no)")
    idx, cls, patches = encode_samples(model, loader, device, args.num_samples)
    with torch.no_grad():
        intra, inter = model.sim.selection(patches, cls)
    grid = model.backbone.grid
    rows = [[label(overlay(img, intra[r, m].view(grid).cpu(), inter[r, m].view(grid).cpu(), grid, args.scale), name)
             for m, (img, name) in enumerate(zip(sample_images(loader, i), model.modalities))]
            for r, i in enumerate(idx)]
    legend = Image.new("RGB", (300, 16), "white")
    d = ImageDraw.Draw(legend)
    for k, (name, c) in enumerate(COLORS.items()):
        d.rectangle((4 + 90 * k, 3, 14 + 90 * k, 13), fill=c)
        d.text((18 + 90 * k, 2), name, fill="black")
    out = compose(rows, header=legend)
    print(f"top-k {cfg.MODEL.SIGNAL.TOPK}: kept per modality (mean) "
          + ", ".join(f"{m} {(intra | inter)[:, k].sum(-1).float().mean():.1f}/{intra.shape[-1]}"
                      for k, m in enumerate(model.modalities)))
    save(out, args.output)


if __name__ == "__main__":
    run_cli(main)
