"""Parameters (total / trainable, per module) and FLOPs per sample of a config, printed as a table.

    python tools/model_cost.py --config_file configs/RGBNT201/Signal.yml [--markdown]

FLOPs come from torch.utils.flop_counter (matmuls, convolutions, attention) for one eval-mode sample
(every modality of the dataset) and for one training sample (forward + backward, including the losses).
"""
import argparse
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from modeling import build_loss, build_model  # noqa: E402
from engine.setup import UsageError, run_cli  # noqa: E402
from data.datasets import dataset_of  # noqa: E402


def parameter_rows(model):
    """(name, parameters, trainable) of the encoder, each of the method's own modules (Signal's SIM / GAM /
    LAM, DeMo's PIFE / HDM / ATM, ...), the BN-neck heads, and the total."""
    rows = []
    groups = {"backbone": model.backbone}
    for name, m in model.named_children():
        if name != "backbone" and not name.startswith(("bottleneck", "classifier")) and \
                any(True for _ in m.parameters()):
            groups[name.upper()] = m
    covered = {id(p) for m in groups.values() for p in m.parameters()}
    heads = [p for p in model.parameters() if id(p) not in covered]
    for name, params in [(n, list(m.parameters())) for n, m in groups.items()] + [("heads (BN + classifiers)", heads)]:
        rows.append((name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
    rows.append(("total", sum(p.numel() for p in model.parameters()),
                 sum(p.numel() for p in model.parameters() if p.requires_grad)))
    return rows


def flops(cfg, model, num_classes):
    h, w = cfg.INPUT.SIZE_TRAIN
    b = 2
    x = {m: torch.randn(b, 3, h, w) for m in model.modalities}
    cams = torch.zeros(b, dtype=torch.long)
    model.eval()
    # gradients on, as in training: under no_grad the flop counter's module hooks trip over parameter views
    # (torch.utils.module_tracker); nothing is backpropagated
    with FlopCounterMode(display=False) as fc:
        model(x, cam_label=cams)
    infer = fc.get_total_flops() / b
    model.train()
    with FlopCounterMode(display=False) as fc:
        losses = build_loss(cfg)(model(x, cam_label=cams), torch.arange(b) % num_classes)
        sum(losses.values()).backward()
    return infer, fc.get_total_flops() / b


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", required=True)
    p.add_argument("--num-classes", type=int, default=0, help="default: training ids of the config's benchmark")
    p.add_argument("--num-cameras", type=int, default=0, help="default: cameras of the config's benchmark")
    p.add_argument("opts", nargs="*")
    args = p.parse_intermixed_args()
    cfg = load_config(args.config_file, args.opts + ["MODEL.PRETRAIN_PATH", ""])
    sizes = dataset_of(cfg).sizes  # the released benchmark's; None where none are published
    classes, cameras = (sizes.train_ids, sizes.cameras) if sizes else (0, 0)
    args.num_classes, args.num_cameras = args.num_classes or classes, args.num_cameras or cameras
    if not args.num_classes or not args.num_cameras:
        raise UsageError(f"model_cost.py: pass --num-classes and --num-cameras for DATASETS.NAMES "
                         f"{cfg.DATASETS.NAMES} (training identities and cameras)")
    model = build_model(cfg, args.num_classes, args.num_cameras, pretrained=False,
                        modalities=dataset_of(cfg).modalities_for(cfg))
    infer, train = flops(cfg, model, args.num_classes)
    h, w = cfg.INPUT.SIZE_TRAIN
    print(f"{args.config_file}: {cfg.MODEL.METHOD}, {cfg.MODEL.TRANSFORMER_TYPE}, input {h}x{w} x "
          f"{len(model.modalities)} modalities, "
          f"{args.num_classes} classes, test feature {model.feat_dim}-d")
    print()
    print("| module | parameters | trainable |")
    print("|---|---:|---:|")
    for name, total, trainable in parameter_rows(model):
        print(f"| {name} | {total / 1e6:.2f} M | {trainable / 1e6:.2f} M |")
    print()
    print("| FLOPs per sample | GFLOP |")
    print("|---|---:|")
    print(f"| inference (eval feature) | {infer / 1e9:.2f} |")
    print(f"| training (forward + backward) | {train / 1e9:.2f} |")


if __name__ == "__main__":
    run_cli(main)
