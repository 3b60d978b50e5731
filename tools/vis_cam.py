"""Per-modality Grad-CAM heat maps over query images: which regions drive each modality's class token.

For every drawn query, RGB | NI | TI are shown with the heat map of their own modality. Grad-CAM is taken
at the input of the backbone's last block: the target is the squared norm of the modality's final class
token (the part of the ReID feature it contributes), channel weights are the gradients averaged over the
patch tokens, and the map is ReLU(sum of weighted channels) per patch, scaled to [0, 1] per image.

    python tools/vis_cam.py --config_file configs/Synthetic/demo.yml --weight output/demo/best.pth \\
        --output docs/cam.png --num-samples 4
"""
import numpy as np
import torch
from common import batch_of, compose, label, load_everything, sample_images, samples_parser, save, spread
from engine.setup import run_cli  # noqa: E402
from PIL import Image



def grad_cam(model, images, cams):
    """[B, M, H', W'] heat maps in [0, 1] (patch grid) for the modalities of a batch."""
    captured = {}

    def keep_input(module, inputs):
        captured["x"] = inputs[0]
        inputs[0].retain_grad()

    handle = model.backbone.vit.blocks[-1].register_forward_pre_hook(keep_input)
    try:
        with torch.enable_grad():
            cls, _ = model.encode(images, cams)                          # [B, 3, D]
            cls.pow(2).sum().backward()                                  # rows are independent samples
    finally:
        handle.remove()
    x, g = captured["x"].detach(), captured["x"].grad
    H, W = model.backbone.grid
    # the patch tokens are the last H x W: before them the class (and register) tokens and a method's own
    # (MDReID's shared token)
    patches, grads = x[:, -H * W:], g[:, -H * W:]
    weights = grads.mean(1, keepdim=True)                                # [3B, 1, C]
    cam = torch.relu((weights * patches).sum(-1))                        # [3B, N]
    cam = cam / cam.amax(1, keepdim=True).clamp_min(1e-12)
    B, M = images[model.modalities[0]].shape[0], len(model.modalities)
    return cam.view(M, B, H, W).transpose(0, 1).cpu()


def colormap(v):
    """Values in [0, 1] -> RGB uint8 (blue - cyan - yellow - red)."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(img, cam, scale, alpha=0.5):
    img = img.resize((img.width * scale, img.height * scale), Image.BICUBIC)
    heat = Image.fromarray((cam.numpy() * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR)
    heat = colormap(np.asarray(heat, dtype=np.float32) / 255)
    mixed = (1 - alpha) * np.asarray(img, dtype=np.float32) + alpha * heat
    return Image.fromarray(mixed.clip(0, 255).astype(np.uint8))


def main():
    args = samples_parser(__doc__, scale=4).parse_intermixed_args()
    cfg, model, loader, nq, device = load_everything(args)
    idx = spread(nq, args.num_samples)                                   # queries
    images, cams = batch_of(loader, idx, device)
    heat = grad_cam(model, images, cams)
    rows = [[label(overlay(img, heat[r, k], args.scale), f"{m} (id {loader.dataset.samples[i].pid})")
             for k, (img, m) in enumerate(zip(sample_images(loader, i), model.modalities))]
            for r, i in enumerate(idx)]
    share = (heat > 0.5).float().flatten(2).mean(-1).mean(0)
    print("share of patches above half of their image's peak: "
          + ", ".join(f"{m} {100 * s:.0f}%" for m, s in zip(model.modalities, share)))
    save(compose(rows), args.output)


if __name__ == "__main__":
    run_cli(main)
