"""The learning rate of every parameter group for every epoch of a config, as the training loop sets it
(the optimizer groups and the scheduler stepped with the 1-based epoch), printed as a markdown table.

    python tools/lr_schedule.py --config_file configs/RGBNT201/Signal.yml [KEY VALUE ...] [--csv out.csv]
                                [--compare-warmup]

--compare-warmup adds a table of the warmup epochs under both SOLVER.WARMUP_RELATIVE settings: each group
from one absolute LR (WARMUP_FACTOR x BASE_LR, the official) or from WARMUP_FACTOR x its own LR.

A group is the set of parameters sharing (LR, weight decay); each column names its first parameter and
the number of tensors it holds. The model is built with random weights (MODEL.PRETRAIN_PATH is ignored).
"""
import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from modeling import build_model  # noqa: E402
from solver import build_optimizer, build_scheduler  # noqa: E402
from engine.setup import run_cli  # noqa: E402


def schedule(cfg, model):
    """(group descriptions, rows of [epoch, lr of each group, ...])."""
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    first = {}
    for name, p in model.named_parameters():
        first.setdefault(id(p), name)
    groups = [f"{first[id(g['params'][0])]} (+{len(g['params']) - 1}), wd {g['weight_decay']:g}"
              for g in optimizer.param_groups]
    rows = []
    for epoch in range(1, cfg.SOLVER.MAX_EPOCHS + 1):
        scheduler.step(epoch)
        rows.append([epoch] + [g["lr"] for g in optimizer.param_groups])
    return groups, rows


def print_warmup_comparison(args, model):
    """The warmup epochs (and the first one after) of every group, absolute warmup -> relative warmup."""
    tables = []
    for relative in ("no", "yes"):
        cfg = load_config(args.config_file, args.opts + ["MODEL.PRETRAIN_PATH", "", "SOLVER.WARMUP_RELATIVE", relative])
        tables.append(schedule(cfg, model)[1])
    n = min(cfg.SOLVER.WARMUP_ITERS + 1, cfg.SOLVER.MAX_EPOCHS)
    print()
    print(f"Warmup, SOLVER.WARMUP_RELATIVE no -> yes ({cfg.SOLVER.SCHEDULER} schedule"
          + (": its warmup is relative either way)" if cfg.SOLVER.SCHEDULER != "cosine" else ")"))
    print()
    print("| epoch | " + " | ".join(f"group {i}" for i in range(len(tables[0][0]) - 1)) + " |")
    print("|---:|" + "---:|" * (len(tables[0][0]) - 1))
    for absolute, relative in zip(tables[0][:n], tables[1][:n]):
        print(f"| {absolute[0]} | " + " | ".join(f"{a:.2e} -> {r:.2e}" for a, r in zip(absolute[1:], relative[1:]))
              + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", required=True)
    p.add_argument("--csv", default="", help="also write the table to this CSV file")
    p.add_argument("--compare-warmup", action="store_true",
                   help="also print the warmup epochs with SOLVER.WARMUP_RELATIVE no and yes side by side")
    p.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = p.parse_intermixed_args()
    cfg = load_config(args.config_file, args.opts + ["MODEL.PRETRAIN_PATH", ""])
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = build_model(cfg, num_classes=2, num_cameras=2, pretrained=False)
    groups, rows = schedule(cfg, model)
    s = cfg.SOLVER
    noise = f"LR noise in epochs {s.LR_NOISE_RANGE} of MAX_EPOCHS" if s.LR_NOISE_RANGE else "no LR noise"
    print(f"{args.config_file}: {s.SCHEDULER} schedule, {s.MAX_EPOCHS} epochs, warmup {s.WARMUP_ITERS}, "
          f"{noise if s.SCHEDULER == 'cosine' else 'steps ' + str(list(s.STEPS))}")
    print()
    for i, g in enumerate(groups):
        print(f"* group {i}: {g}")
    print()
    print("| epoch | " + " | ".join(f"group {i}" for i in range(len(groups))) + " |")
    print("|---:|" + "---:|" * len(groups))
    for row in rows:
        print(f"| {row[0]} | " + " | ".join(f"{v:.4e}" for v in row[1:]) + " |")
    if args.compare_warmup:
        print_warmup_comparison(args, model)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch"] + groups)
            w.writerows(rows)


if __name__ == "__main__":
    run_cli(main)
