"""Train a list of configs and write a markdown table of mAP / Rank-1 / Rank-5 / Rank-10 (plus mINP) and
one training-curve plot per run (loss terms and mAP per epoch, read from metrics.jsonl).

    python tools/ablate.py --configs configs/Synthetic/{baseline,SIM,SIM_GAM,demo}.yml \\
        --output docs/ablation [--runs-dir output/ablation] [KEY VALUE ...]

Each run trains into <runs-dir>/<config name>/ (OUTPUT_DIR is overridden); the table (ablation.md) and
the plots (<name>_curves.png) go to --output (default: the runs folder). A run folder that already holds a run stops the tool before
anything trains, unless --resume (continue unfinished runs, keep finished ones) or --overwrite (train
them again) says what to do. --skip-training only collects finished runs. Every collected run must be
finished and trained with the config the command names (paths and speed settings aside), so a table never
mixes runs.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plotting import line_chart, stack  # noqa: E402

from config import load_config  # noqa: E402
from engine.rundir import FREE_KEYS, config_changes, read_metrics, run_files  # noqa: E402
from engine.setup import run_cli  # noqa: E402

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def run_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def read_records(out_dir):
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: the run did not finish")
    return read_metrics(out_dir)


def check_finished(name, out_dir, cfg):
    """The run in ``out_dir`` is finished and was trained with ``cfg`` (paths and speed settings aside)."""
    saved = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise SystemExit(f"{name}: no run in {out_dir} (config.yaml missing)")
    with open(saved) as f:
        changes = [c for c in config_changes(f.read(), cfg) if c[0] not in FREE_KEYS]
    if changes:
        raise SystemExit(f"{name}: the run in {out_dir} was trained with another config:\n"
                         + "\n".join(f"  {k}: run {old!r}, asked {new!r}" for k, old, new in changes))
    records = read_records(out_dir)
    if not records or records[-1]["epoch"] != cfg.SOLVER.MAX_EPOCHS:
        done = records[-1]["epoch"] if records else 0
        raise SystemExit(f"{name}: the run in {out_dir} is not finished ({done} of {cfg.SOLVER.MAX_EPOCHS} "
                         f"epochs); continue it with --resume")
    return records


def curves(name, records):
    skip = {"epoch", "loss", "lr", "seconds", "samples_per_s", "iterations", "loss_scale", "skipped_steps", *METRICS}
    losses = {k: [(r["epoch"], r[k]) for r in records if k in r]
              for k in records[0] if k not in skip}
    losses["total"] = [(r["epoch"], r["loss"]) for r in records]
    metrics = {k: [(r["epoch"], 100 * r[k]) for r in records if k in r] for k in ("mAP", "Rank-1")}
    return stack([line_chart(losses, f"{name}: loss terms"), line_chart(metrics, f"{name}: evaluation", ylabel="%")])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--output", default="", help="folder for the table and the plots (default: --runs-dir)")
    p.add_argument("--runs-dir", default="output/ablation", help="folder for the training runs")
    p.add_argument("--skip-training", action="store_true", help="only collect finished runs")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs; finished runs are kept")
    p.add_argument("--overwrite", action="store_true", help="train every run again, deleting the old ones")
    p.add_argument("opts", nargs="*", help="KEY VALUE overrides applied to every run")
    args = p.parse_intermixed_args()
    args.output = args.output or args.runs_dir
    if sum((args.skip_training, args.resume, args.overwrite)) > 1:
        raise SystemExit("--skip-training, --resume and --overwrite exclude each other")
    runs = []
    for cfg_path in args.configs:
        name = run_name(cfg_path)
        out_dir = os.path.join(args.runs_dir, name)
        runs.append((name, cfg_path, out_dir, load_config(cfg_path, args.opts + ["OUTPUT_DIR", out_dir])))
    if len({name for name, *_ in runs}) < len(runs):
        raise SystemExit("two configs share a file name; their runs would share a folder under --runs-dir")
    if not (args.skip_training or args.resume or args.overwrite):
        taken = [out_dir for _, _, out_dir, cfg in runs if run_files(out_dir, cfg.MODEL.NAME)]
        if taken:
            raise SystemExit("these run folders already hold runs: " + ", ".join(taken) + "\nPass --resume to "
                             "continue them, --overwrite to train them again, --skip-training to only collect "
                             "them, or another --runs-dir.")
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for name, cfg_path, out_dir, cfg in runs:
        if not args.skip_training:
            flag = []
            if args.overwrite:
                flag = ["--overwrite"]
            elif args.resume and os.path.isfile(os.path.join(out_dir, "last.pth")):
                flag = ["--resume"]
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config_file", cfg_path, *flag, *args.opts,
                   "OUTPUT_DIR", out_dir]
            print("running:", " ".join(cmd), flush=True)
            code = subprocess.run(cmd).returncode
            if code:
                raise SystemExit(f"training {name} failed (exit code {code}); see {out_dir}/train_log.txt")
        records = check_finished(name, out_dir, cfg)
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
    run_cli(main)
