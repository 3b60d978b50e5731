"""Shared set-up of the visual and export tools: config, data, model and checkpoint from the command line."""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from data import build_test_dataloader, stack_items, to_device  # noqa: E402
from engine.setup import UsageError, resolve_device  # noqa: E402
from modeling import build_model, load_eval_model  # noqa: E402


def tool_parser(description, ext=".png"):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", required=True, help="YAML config of the trained model")
    p.add_argument("--weight", default="", help="checkpoint (default: TEST.WEIGHT of the config)")
    p.add_argument("--output", default="", help=f"output file (default: OUTPUT_DIR/<tool name>{ext})")
    p.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    p.set_defaults(output_ext=ext)
    return p


def samples_parser(description, scale):
    """``tool_parser`` plus --num-samples and --scale, for tools that draw a few test samples."""
    p = tool_parser(description)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--scale", type=int, default=scale, help="upscaling of the drawn images")
    return p


def encode_samples(model, loader, device, num_samples):
    """Encode ``num_samples`` evenly spread test samples -> (indices, class tokens [B, M, D], patches)."""
    idx = spread(len(loader.dataset), num_samples)
    images, cams = batch_of(loader, idx, device)
    with torch.no_grad():
        cls, patches = model.encode(images, cams)
    return idx, cls, patches


def load_everything(args, need_weights=True):
    """(cfg, model in eval mode, test loader, num_query, device)."""
    cfg = load_config(args.config_file, args.opts + ["DATALOADER.NUM_WORKERS", "0"])
    if not args.output:  # tools write to the run's folder unless told otherwise, never into tracked files
        tool = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        args.output = os.path.join(cfg.OUTPUT_DIR, tool + getattr(args, "output_ext", ".png"))
    device = resolve_device(cfg)
    test_loader, num_query, dataset = build_test_dataloader(cfg)
    weight = args.weight or cfg.TEST.WEIGHT
    if weight:
        model, _ = load_eval_model(cfg, weight, dataset.modalities)
    elif need_weights:
        raise UsageError("no checkpoint: pass --weight path.pth or TEST.WEIGHT path.pth")
    else:
        model = build_model(cfg, 1, dataset.num_cameras, pretrained=False, modalities=dataset.modalities)
        model.backbone.camera_mode = cfg.TEST.CAMERA_EMBEDDING
    return cfg, model.to(device).eval(), test_loader, num_query, device


def sample_images(loader, index):
    """The sample's modalities as RGB PIL images (as stored on disk), in the dataset's order."""
    return [Image.fromarray(np.ascontiguousarray(a)) for a in loader.dataset.read(index).values()]


def stack_modalities(images, scale=1, gap=2):
    """The modalities (RGB | NI | TI) side by side, upscaled by ``scale``."""
    w, h = images[0].size
    w, h = w * scale, h * scale
    n = len(images)
    out = Image.new("RGB", (n * w + (n - 1) * gap, h), "white")
    for i, img in enumerate(images):
        out.paste(img.resize((w, h), Image.NEAREST), (i * (w + gap), 0))
    return out


def frame(img, color, width=3):
    out = Image.new("RGB", (img.width + 2 * width, img.height + 2 * width), color)
    out.paste(img, (width, width))
    return out


def label(img, text, height=14):
    out = Image.new("RGB", (img.width, img.height + height), "white")
    out.paste(img, (0, height))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def save(img, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    img.save(path)
    print(f"saved {path} ({img.width}x{img.height})")


def batch_of(loader, indices, device):
    batch = stack_items(loader.dataset[i] for i in indices)
    return to_device(loader, batch, loader.dataset.modalities, device), batch["camid"].to(device)


def to_numpy(t):
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def compose(rows, gap=6, header=None):
    """Lay out rows of tiles (lists of PIL images) top to bottom, with an optional header image on top."""
    lines = []
    for tiles in rows:
        line = Image.new("RGB", (sum(t.width + gap for t in tiles), max(t.height for t in tiles)), "white")
        x = 0
        for t in tiles:
            line.paste(t, (x, 0))
            x += t.width + gap
        lines.append(line)
    if header is not None:
        lines.insert(0, header)
    out = Image.new("RGB", (max(r.width for r in lines), sum(r.height + gap for r in lines)), "white")
    y = 0
    for r in lines:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


def spread(total, n):
    """``n`` evenly spaced sample indices out of ``total``."""
    return [int(i) for i in np.linspace(0, total - 1, min(n, total))]
