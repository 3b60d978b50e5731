"""Train a list of configs and write a markdown table of mAP / Rank-1 / Rank-5 / Rank-10 (plus mINP) and
one training-curve plot per run (loss terms and mAP per epoch, read from metrics.jsonl).

    python tools/ablate.py --configs configs/Synthetic/{baseline,SIM,SIM_GAM,demo}.yml \\
        --output docs/ablation [--runs-dir output/ablation] [KEY VALUE ...]

Each run trains into <runs-dir>/<config name>/ (OUTPUT_DIR is overridden); the table (ablation.md) and
the plots (<name>_curves.png) go to --output. --skip-training only collects finished runs.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plotting import line_chart, stack  # noqa: E402

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def run_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def read_records(out_dir):
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: the run did not finish")
    records = {}
    for line in open(path):
        r = json.loads(line)
        records[r["epoch"]] = r            # a resumed run may repeat an epoch: keep the last
    return [records[e] for e in sorted(records)]


def curves(name, records):
    skip = {"epoch", "loss", "lr", "seconds", "samples_per_s", *METRICS}
    losses = {k: [(r["epoch"], r[k]) for r in records if k in r]
              for k in records[0] if k not in skip}
    losses["total"] = [(r["epoch"], r["loss"]) for r in records]
    metrics = {k: [(r["epoch"], 100 * r[k]) for r in records if k in r] for k in ("mAP", "Rank-1")}
    return stack([line_chart(losses, f"{name}: loss terms"), line_chart(metrics, f"{name}: evaluation", ylabel="%")])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--output", required=True, help="folder for the table and the plots")
    p.add_argument("--runs-dir", default="output/ablation", help="folder for the training runs")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("opts", nargs="*", help="KEY VALUE overrides applied to every run")
    args = p.parse_intermixed_args()
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for cfg_path in args.configs:
        name = run_name(cfg_path)
        out_dir = os.path.join(args.runs_dir, name)
        if not args.skip_training:
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config_file", cfg_path, *args.opts,
                   "OUTPUT_DIR", out_dir]
            print("running:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        records = read_records(out_dir)
        evaluated = [r for r in records if "mAP" in r]
        best = max(evaluated, key=lambda r: r["mAP"])
        rows.append((name, evaluated[-1], best))
        curves(name, records).save(os.path.join(args.output, f"{name}_curves.png"))
    lines = ["| run | mAP | Rank-1 | Rank-5 | Rank-10 | mINP | best mAP (epoch) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, last, best in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * last[k]:.1f}" for k in METRICS)
                     + f" | {100 * best['mAP']:.1f} ({best['epoch']}) |")
    table = "\n".join(lines) + "\n\nFigures of the last epoch; the last column is the best evaluated epoch.\n"
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
