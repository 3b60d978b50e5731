"""Speed and memory figures of a config: one JSON line per figure.

    python tools/benchmark.py --config_file configs/RGBNT201/Signal.yml --batch 8 [--steps 3] [KEY VALUE ...]

Figures: training step seconds and samples/s, inference samples/s, model FLOPs per training step and per
inference sample (torch.utils.flop_counter), achieved FLOP/s and its ratio to this device's dense matmul
rate measured in the same run (fp32 on CPU; on CUDA the SOLVER.AMP dtype), peak memory (RSS on CPU, max allocated on
CUDA), data loading samples/s per worker on the synthetic benchmark, and evaluation time for the test
loader size of the config's benchmark (features + distances + metrics on random features).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from engine import make_grad_scaler  # noqa: E402
from engine import train_step as engine_train_step  # noqa: E402
from engine.inference import autocast_context  # noqa: E402
from layers import build_loss  # noqa: E402
from modeling import MODALITIES, build_model  # noqa: E402
from solver import build_optimizer  # noqa: E402
from utils.cpu import keep_freed_memory  # noqa: E402
from utils.metrics import Evaluator  # noqa: E402
from engine.setup import run_cli  # noqa: E402

_EVAL_SIZES = {"RGBNT201": (836, 836), "RGBNT100": (1715, 8575), "MSVR310": (591, 1055), "Market1501-MM": (3368, 15913),
               "Synthetic": (192, 192)}


def emit(figure, value, unit, **extra):
    print(json.dumps({"figure": figure, "value": value, "unit": unit, **extra}), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device, dtype, n=4096, repeat=5):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_for(cfg, b, device, num_classes):
    h, w = cfg.INPUT.SIZE_TRAIN
    g = torch.Generator().manual_seed(0)
    images = {m: torch.randn(b, 3, h, w, generator=g).to(device) for m in MODALITIES}
    k = max(cfg.DATALOADER.NUM_INSTANCE, 2) if b >= 4 else 1
    target = (torch.arange(b) // min(k, b)) % num_classes
    return images, target.to(device), torch.zeros(b, dtype=torch.long, device=device)


def bench_model(cfg, args, device):
    num_classes = 171
    model = build_model(cfg, num_classes, 4, pretrained=False).to(device)
    if args.compile:
        model = torch.compile(model)
    opt = build_optimizer(cfg, model)
    loss_fn = build_loss(cfg)
    images, target, cams = batch_for(cfg, args.batch, device, num_classes)
    amp = cfg.SOLVER.AMP if device.type == "cuda" else "none"
    scaler = make_grad_scaler(device, amp)
    batch = {**images, "pid": target, "camid": cams}

    def step():
        engine_train_step(model, batch, loss_fn, opt, device, amp, scaler)

    model.train()
    with FlopCounterMode(display=False) as fc:
        step()
    train_flops = fc.get_total_flops()
    for _ in range(args.warmup):
        step()
    sync(device)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    step = float(np.median(times))
    base = {"config": args.config_file, "batch": args.batch, "device": str(device)}
    emit("train_step_seconds", round(step, 4), "s", **base)
    emit("train_samples_per_s", round(args.batch / step, 2), "samples/s", **base)
    emit("train_flops_per_step", train_flops, "FLOP", **base)
    emit("train_achieved_flops", round(train_flops / step / 1e9, 2), "GFLOP/s", **base)

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc, autocast_context(device, amp):
        model(images, cam_label=cams)
    infer_flops = fc.get_total_flops()
    with torch.no_grad(), autocast_context(device, amp):
        for _ in range(args.warmup):
            model(images, cam_label=cams)
        sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            model(images, cam_label=cams)
        sync(device)
    infer = (time.perf_counter() - t) / args.steps
    emit("inference_samples_per_s", round(args.batch / infer, 2), "samples/s", **base)
    emit("inference_flops_per_sample", infer_flops // args.batch, "FLOP", **base)
    emit("inference_achieved_flops", round(infer_flops / infer / 1e9, 2), "GFLOP/s", **base)
    emit("peak_memory", round(peak_memory(device), 1), "MiB (max RSS)" if device.type == "cpu" else "MiB (max allocated)", **base)
    return train_flops / step, infer_flops / infer


def bench_data(cfg, args):
    from data import MultiModalImageDataset, build_dataset
    from data.transforms import build_transforms
    dcfg = load_config(args.config_file, args.opts + ["DATASETS.NAMES", "Synthetic", "DATASETS.ROOT_DIR", args.data_root])
    train = build_dataset(dcfg).train
    ds, n = MultiModalImageDataset(train, build_transforms(dcfg, train=True)), min(len(train), 128)
    ds[0]
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    rate = n / (time.perf_counter() - t)
    h, w = dcfg.INPUT.SIZE_TRAIN
    emit("data_samples_per_s_per_worker", round(rate, 1), "samples/s",
         note=f"decode + train augmentation of 3 modalities at {h}x{w} on the synthetic benchmark")


def bench_eval(cfg, device):
    nq, ng = _EVAL_SIZES.get(cfg.DATASETS.NAMES, _EVAL_SIZES["RGBNT100"])
    dim = 3072 if cfg.MODEL.USE_SIM else 1536
    g = torch.Generator().manual_seed(0)
    pids = torch.randint(0, 50, (nq + ng,), generator=g).numpy()
    cams = torch.randint(0, 4, (nq + ng,), generator=g).numpy()
    feats = torch.nn.functional.normalize(torch.randn(nq + ng, dim, generator=g), dim=1)
    ev = Evaluator(nq, use_scenes=cfg.DATASETS.NAMES == "MSVR310")
    same = cfg.DATASETS.NAMES in ("RGBNT201", "Synthetic")
    ev.process(feats[:nq] if same else feats, pids[:nq] if same else pids, cams[:nq] if same else cams,
               np.zeros(nq if same else nq + ng))
    t = time.perf_counter()
    ev.evaluate()
    emit("evaluation_seconds", round(time.perf_counter() - t, 3), "s", num_query=nq,
         num_gallery=nq if same else ng, note="distances + CMC/mAP/mINP on precomputed features")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default="configs/RGBNT201/Signal.yml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--data-root", default="./datasets")
    p.add_argument("--skip", default="", help="comma list of parts to skip: model,data,eval")
    p.add_argument("opts", nargs="*")
    args = p.parse_intermixed_args()
    cfg = load_config(args.config_file, args.opts + ["MODEL.PRETRAIN_PATH", ""])
    device = torch.device(args.device)
    if device.type == "cpu" and cfg.SOLVER.CPU_KEEP_FREED_MEMORY:
        keep_freed_memory()
    skip = set(filter(None, args.skip.split(",")))
    amp_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = amp_dtypes.get(cfg.SOLVER.AMP, torch.float32) if device.type == "cuda" else torch.float32
    rate = matmul_rate(device, dtype)
    emit("matmul_rate", round(rate / 1e9, 2), "GFLOP/s", dtype=str(dtype), device=str(device),
         threads=torch.get_num_threads(),
         device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if "model" not in skip:
        train_rate, infer_rate = bench_model(cfg, args, device)
        emit("train_flops_utilisation", round(train_rate / rate, 3), "fraction of matmul rate")
        emit("inference_flops_utilisation", round(infer_rate / rate, 3), "fraction of matmul rate")
    if "data" not in skip:
        bench_data(cfg, args)
    if "eval" not in skip:
        bench_eval(cfg, device)


if __name__ == "__main__":
    run_cli(main)
