"""Train a list of configs and write a markdown table of mAP / Rank-1 / Rank-5 / Rank-10 (plus mINP) and
one training-curve plot per run (loss terms and mAP per epoch, read from metrics.jsonl).

    python tools/ablate.py --configs configs/Synthetic/{baseline,SIM,SIM_GAM,demo}.yml \\
        --output docs/ablation [--runs-dir output/ablation] [KEY VALUE ...]

    python tools/ablate.py --configs configs/RGBNT201/Signal_dinov3.yml --sweep SOLVER.BACKBONE_LR 5e-6,2e-5,5e-5 \
        [--sweep SOLVER.LAYER_DECAY 0.65,0.75] DATASETS.VAL_IDS 0.1

    python tools/ablate.py --compare --configs configs/Synthetic/{baseline_method,demo,DeMo_small,MDReID_small}.yml \
        --output docs/comparison

--compare compares methods: besides the figures of the last epoch, comparison.md gives each run's method,
parameters, FLOPs per sample (inference), the mean training step time (epochs after the first), and the mean
mAP over the missing-modality settings of ``test.py TEST.MISS all`` on its best.pth (run by the tool), and
comparison.png plots every run's mAP per epoch in one chart.

--sweep KEY v1,v2,... (repeatable: the grid of every combination) trains one run per config and combination,
into <runs-dir>/<config name>-<KEY=value,...>/. A sweep selects on the validation split (DATASETS.VAL_IDS,
training identities held out of training), never on the test set: the table (sweep.md) gives each run's
validation mAP / Rank-1 at its best validation epoch and the test figures of that epoch, and marks the run
with the best validation mAP.

Each run trains into <runs-dir>/<config name>/ (OUTPUT_DIR is overridden); the table (ablation.md) and
the plots (<name>_curves.png) go to --output (default: the runs folder). A run folder that already holds a run stops the tool before
anything trains, unless --resume (continue unfinished runs, keep finished ones) or --overwrite (train
them again) says what to do. --skip-training only collects finished runs. Every collected run must be
finished and trained with the config the command names (paths and speed settings aside), so a table never
mixes runs.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from plotting import line_chart, stack  # noqa: E402

from config import load_config  # noqa: E402
from engine.rundir import config_changes, free_keys, read_metrics, run_files  # noqa: E402
from engine.preemption import PREEMPTED_EXIT_CODE  # noqa: E402
from engine.setup import UsageError, run_cli  # noqa: E402
from utils.metrics import METRIC_NAMES  # noqa: E402

METRICS = METRIC_NAMES


def run_name(path):
    return os.path.splitext(os.path.basename(path))[0]


def read_records(out_dir):
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"{path} not found: the run did not finish")
    return read_metrics(out_dir)


def check_finished(name, out_dir, cfg):
    """The run in ``out_dir`` is finished and was trained with ``cfg`` (paths and speed settings aside)."""
    saved = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(saved):
        raise UsageError(f"{name}: no run in {out_dir} (config.yaml missing)")
    with open(saved) as f:
        changes = [c for c in config_changes(f.read(), cfg) if c[0] not in free_keys(cfg)]
    if changes:
        raise UsageError(f"{name}: the run in {out_dir} was trained with another config:\n"
                         + "\n".join(f"  {k}: run {old!r}, asked {new!r}" for k, old, new in changes))
    records = read_records(out_dir)
    if not records or records[-1]["epoch"] != cfg.SOLVER.MAX_EPOCHS:
        done = records[-1]["epoch"] if records else 0
        raise UsageError(f"{name}: the run in {out_dir} is not finished ({done} of {cfg.SOLVER.MAX_EPOCHS} "
                         f"epochs); continue it with --resume")
    return records


def curves(name, records):
    skip = {"epoch", "loss", "lr", "seconds", "samples_per_s", "iterations", "loss_scale", "skipped_steps", *METRICS}
    losses = {k: [(r["epoch"], r[k]) for r in records if k in r]
              for k in records[0] if k not in skip}
    losses["total"] = [(r["epoch"], r["loss"]) for r in records]
    metrics = {k: [(r["epoch"], 100 * r[k]) for r in records if k in r] for k in ("mAP", "Rank-1")}
    return stack([line_chart(losses, f"{name}: loss terms"), line_chart(metrics, f"{name}: evaluation", ylabel="%")])


def sweep_grid(items):
    """[[(KEY, value), ...], ...]: every combination of the --sweep values ([[]] without --sweep)."""
    import itertools
    axes = []
    for key, values in items:
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise UsageError(f"--sweep {key}: no values (expected a comma-separated list, e.g. 5e-6,2e-5)")
        axes.append([(key, v) for v in vals])
    return [list(c) for c in itertools.product(*axes)]


def write_sweep_table(rows, output):
    """sweep.md: validation figures of each run's best validation epoch and the test figures of that epoch
    (summary.json's test_best_epoch), the run with the best validation mAP marked."""
    import json
    table = []
    for name, _, best, out_dir in rows:
        with open(os.path.join(out_dir, "summary.json")) as f:
            test = json.load(f).get("test_best_epoch")
        if test is None:
            raise UsageError(f"{name}: {out_dir}/summary.json has no test figures of the selected epoch")
        table.append((name, best, test))
    chosen = max(range(len(table)), key=lambda i: table[i][1]["mAP"])
    lines = ["| run | val mAP | val Rank-1 | epoch | test mAP | test Rank-1 | test mINP | selected |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, (name, best, test) in enumerate(table):
        lines.append(f"| {name} | {100 * best['mAP']:.1f} | {100 * best['Rank-1']:.1f} | {best['epoch']} | "
                     f"{100 * test['mAP']:.1f} | {100 * test['Rank-1']:.1f} | {100 * test['mINP']:.1f} | "
                     + ("**selected**" if i == chosen else "") + " |")
    text = ("\n".join(lines) + "\n\nEach run's best epoch and the run are chosen on the validation identities "
            "(DATASETS.VAL_IDS); the test figures are those of that epoch, for reporting only.\n")
    with open(os.path.join(output, "sweep.md"), "w") as f:
        f.write(text)
    print(text)


def missing_average(name, cfg_path, opts, out_dir, dataset):
    """test.py TEST.MISS all on the run's best.pth (one more pass over the test set, in a fresh process): the
    mean mAP over the missing-modality settings, and the rule the method encodes them by."""
    import glob
    import json
    cmd = [sys.executable, os.path.join(ROOT, "test.py"), "--config_file", cfg_path, *opts, "OUTPUT_DIR", out_dir,
           "TEST.WEIGHT", os.path.join(out_dir, "best.pth"), "TEST.MISS", "all", "LOG.PROGRESS_BARS", "no"]
    print("running:", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        raise SystemExit(f"evaluating {name} with TEST.MISS all failed; see {out_dir}/test_log.txt")
    found = sorted(glob.glob(os.path.join(out_dir, f"test_best_{dataset}_miss-all_*.json")), key=os.path.getmtime)
    with open(found[-1]) as f:
        result = json.load(f)
    return result["average"]["mAP"], result.get("missing_rule", "")


def cost(cfg, out_dir):
    """(parameters, inference FLOPs per sample) of the run's model, sized from its best.pth."""
    import torch
    from model_cost import flops

    from modeling import build_model
    meta = torch.load(os.path.join(out_dir, "best.pth"), map_location="cpu", weights_only=False).get("meta", {})
    model = build_model(cfg, meta.get("num_classes", 2), meta.get("num_cameras", 1), pretrained=False,
                        modalities=meta.get("modalities") or ("RGB", "NI", "TI"))
    return sum(p.numel() for p in model.parameters()), flops(cfg, model, meta.get("num_classes", 2))[0]


def write_comparison(rows, runs, output):
    """comparison.md (one row per run) and comparison.png (every run's mAP per epoch)."""
    lines = ["| run | method | mAP | Rank-1 | mINP | params | GFLOPs / sample | train step | missing-modality mAP |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    series, rules = {}, set()
    for (name, last, best, out_dir), (_, cfg_path, _, cfg, opts) in zip(rows, runs):
        records = check_finished(name, out_dir, cfg)
        timed = records[1:] or records
        step_ms = 1000 * sum(r["seconds"] / r["iterations"] for r in timed) / len(timed)
        params, infer = cost(cfg, out_dir)
        missing, rule = missing_average(name, cfg_path, opts, out_dir, cfg.DATASETS.NAMES)
        rules.add(f"{cfg.MODEL.METHOD}: {rule}")
        lines.append(f"| {name} | {cfg.MODEL.METHOD} | {100 * last['mAP']:.1f} | {100 * last['Rank-1']:.1f} | "
                     f"{100 * last['mINP']:.1f} | {params / 1e6:.2f} M | {infer / 1e9:.3f} | {step_ms:.0f} ms | "
                     f"{100 * missing:.1f} |")
        series[name] = [(r["epoch"], 100 * r["mAP"]) for r in records if "mAP" in r]
    text = ("\n".join(lines) + "\n\nFigures of the last epoch. Train step: mean wall time per optimizer step "
            "(batch of SOLVER.IMS_PER_BATCH, epochs after the first). Missing-modality mAP: the mean over the "
            "settings of test.py TEST.MISS all on best.pth (" + "; ".join(sorted(rules)) + ").\n")
    with open(os.path.join(output, "comparison.md"), "w") as f:
        f.write(text)
    line_chart(series, "mAP per epoch", size=(640, 340), ylabel="%").save(os.path.join(output, "comparison.png"))
    print(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--output", default="", help="folder for the table and the plots (default: --runs-dir)")
    p.add_argument("--runs-dir", default="output/ablation", help="folder for the training runs")
    p.add_argument("--skip-training", action="store_true", help="only collect finished runs")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs; finished runs are kept")
    p.add_argument("--overwrite", action="store_true", help="train every run again, deleting the old ones")
    p.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: passed to train.py (continue with this config key changed against a "
                        "run's checkpoint; repeatable or comma-separated, 'all' for every key)")
    p.add_argument("--sweep", nargs=2, action="append", default=[], metavar=("KEY", "VALUES"),
                   help="train one run per value (comma-separated) of the config KEY; repeatable (a grid); "
                        "selects by the validation split (DATASETS.VAL_IDS)")
    p.add_argument("--compare", action="store_true",
                   help="compare methods: comparison.md with parameters, FLOPs, step time and the missing-modality "
                        "mAP of each run, and comparison.png with every run's mAP per epoch")
    p.add_argument("opts", nargs="*", help="KEY VALUE overrides applied to every run")
    args = p.parse_intermixed_args()
    args.output = args.output or args.runs_dir
    sweep = sweep_grid(args.sweep)
    if sum((args.skip_training, args.resume, args.overwrite)) > 1:
        raise UsageError("--skip-training, --resume and --overwrite exclude each other")
    if args.allow_change and not args.resume:
        raise UsageError("--allow-change only applies with --resume (train.py continues each run with it)")
    runs = []
    for cfg_path in args.configs:
        for combo in sweep:
            name = run_name(cfg_path) + re.sub(r"[^\w.=+-]", "_", "".join(f"-{k}={v}" for k, v in combo))
            out_dir = os.path.join(args.runs_dir, name)
            opts = args.opts + [x for kv in combo for x in kv]
            cfg = load_config(cfg_path, opts + ["OUTPUT_DIR", out_dir])
            if len(sweep) > 1 and cfg.DATASETS.VAL_IDS <= 0:
                raise UsageError("--sweep selects a run on the validation split: set DATASETS.VAL_IDS (a count or "
                                 "a fraction of the training identities), so the test set never chooses")
            runs.append((name, cfg_path, out_dir, cfg, opts))
    if len({name for name, *_ in runs}) < len(runs):
        raise UsageError("two configs share a file name; their runs would share a folder under --runs-dir")
    if not (args.skip_training or args.resume or args.overwrite):
        taken = [out_dir for _, _, out_dir, cfg, _ in runs if run_files(out_dir, cfg.MODEL.NAME)]
        if taken:
            raise UsageError("these run folders already hold runs: " + ", ".join(taken) + "\nPass --resume to "
                             "continue them, --overwrite to train them again, --skip-training to only collect "
                             "them, or another --runs-dir.")
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for name, cfg_path, out_dir, cfg, opts in runs:
        if not args.skip_training:
            flag = []
            if args.overwrite:
                flag = ["--overwrite"]
            elif args.resume and os.path.isfile(os.path.join(out_dir, "last.pth")):
                flag = ["--resume"] + [x for key in args.allow_change for x in ("--allow-change", key)]
            cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config_file", cfg_path, *flag, *opts,
                   "OUTPUT_DIR", out_dir]
            print("running:", " ".join(cmd), flush=True)
            code = subprocess.run(cmd).returncode
            if code == PREEMPTED_EXIT_CODE:
                raise SystemExit(f"training {name} was stopped by a signal and saved its state (exit code {code}); "
                                 f"run the same ablate.py command with --resume to continue")
            if code:
                raise SystemExit(f"training {name} failed (exit code {code}); see {out_dir}/train_log.txt")
        records = check_finished(name, out_dir, cfg)
        evaluated = [r for r in records if "mAP" in r]
        best = max(evaluated, key=lambda r: r["mAP"])
        rows.append((name, evaluated[-1], best, out_dir))
        curves(name, records).save(os.path.join(args.output, f"{name}_curves.png"))
    if len(sweep) > 1:
        return write_sweep_table(rows, args.output)
    if args.compare:
        write_comparison(rows, runs, args.output)
    lines = ["| run | mAP | Rank-1 | Rank-5 | Rank-10 | mINP | best mAP (epoch) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, last, best, _ in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * last[k]:.1f}" for k in METRICS)
                     + f" | {100 * best['mAP']:.1f} ({best['epoch']}) |")
    table = "\n".join(lines) + "\n\nFigures of the last epoch; the last column is the best evaluated epoch.\n"
    with open(os.path.join(args.output, "ablation.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    run_cli(main)
