"""Speed and memory figures of a config: one JSON line per figure.

    python tools/benchmark.py --config_file configs/RGBNT201/Signal.yml --batch 8 [--steps 3] [KEY VALUE ...]

Figures: training step seconds and samples/s, inference samples/s, model FLOPs per training step and per
inference sample (torch.utils.flop_counter), achieved FLOP/s and its ratio to this device's dense matmul
rate measured in the same run (fp32 on CPU; on CUDA the SOLVER.AMP dtype), peak memory (RSS on CPU, max allocated on
CUDA), the training loader's triplets/s per worker core (tools/benchmark_data.py), and evaluation time for the test
loader size of the config's benchmark (features + distances + metrics on random features).

    python tools/benchmark.py --config_file configs/RGBNT201/Signal.yml --batch 8 --official

With --official (CPU), every figure is measured side by side against the official code as transcribed in
reference/official.py, each side as it runs (the official model called once per modality, its optimizer with one
Adam group per tensor; ours with and without SOLVER.CPU_KEEP_FREED_MEMORY), from the same weights and batch,
each training side in a fresh process so that its peak memory is its own: training step (median),
inference, peak RSS, evaluation at RGBNT100 size (1,715 x 8,575, 3,072-d) and k-reciprocal re-ranking at the
same size (512-d). Both sides' first-step losses must agree and the evaluations must be identical. Ends with
a Markdown table.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from engine import amp_mode, make_grad_scaler  # noqa: E402
from engine import train_step as engine_train_step  # noqa: E402
from engine.amp import autocast_context  # noqa: E402
from modeling import build_loss  # noqa: E402
from data.datasets import dataset_of, evaluation_reference, reference_sizes  # noqa: E402
from modeling import MODALITIES, backbone_spec, build_model  # noqa: E402
from modeling.backbone import backbone_names  # noqa: E402
from solver import build_optimizer  # noqa: E402
from utils.cpu import keep_freed_memory  # noqa: E402
from utils.metrics import Evaluator  # noqa: E402
from engine.setup import UsageError, run_cli  # noqa: E402



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


def step_times(fn, warmup, steps, device):
    """``warmup`` untimed calls of ``fn``, then the seconds of each of ``steps`` timed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def bench_model(cfg, args, device):
    sizes, _ = reference_sizes(cfg)
    num_classes = sizes.train_ids
    model = build_model(cfg, num_classes, sizes.cameras, pretrained=False).to(device)
    if args.compile:
        model = torch.compile(model)
    opt = build_optimizer(cfg, model)
    loss_fn = build_loss(cfg)
    images, target, cams = batch_for(cfg, args.batch, device, num_classes)
    amp = amp_mode(cfg, device)
    scaler = make_grad_scaler(device, amp)
    batch = {**images, "pid": target, "camid": cams}

    def step():
        engine_train_step(model, batch, loss_fn, opt, device, amp, scaler)

    model.train()
    with FlopCounterMode(display=False) as fc:
        step()
    train_flops = fc.get_total_flops()
    step = float(np.median(step_times(step, args.warmup, args.steps, device)))
    base = {"config": args.config_file, "batch": args.batch, "device": str(device)}
    emit("train_step_seconds", round(step, 4), "s", **base)
    emit("train_samples_per_s", round(args.batch / step, 2), "samples/s", **base)
    emit("train_flops_per_step", train_flops, "FLOP", **base)
    emit("train_achieved_flops", round(train_flops / step / 1e9, 2), "GFLOP/s", **base)
    args.train_flops_per_sample = train_flops / args.batch

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


# Published dense fp16 tensor-core rates with fp32 accumulation, as AMP uses (no sparsity): NVIDIA's Ampere
# GA102 whitepaper (RTX 3090), A100 and H100 SXM datasheets.
GPU_FP16_TFLOPS = {"RTX 3090": 71.0, "A100": 312.0, "H100 SXM": 989.0}
GPU_UTILISATION = 0.4


def bench_data(cfg, args):
    """The training loader train.py builds (tools/benchmark_data.py: 0, 1 and N workers, files and cache, beside
    the float32 pipeline before it), then the workers each GPU would need at the per-core rate from the files
    with N workers."""
    import benchmark_data
    per_sample = getattr(args, "train_flops_per_sample", 0)
    if not per_sample:  # the model was skipped: count a 2-sample step
        from model_cost import flops
        sizes, _ = reference_sizes(cfg)
        per_sample = flops(cfg, build_model(cfg, sizes.train_ids, sizes.cameras, pretrained=False), sizes.train_ids)[1]
    need = {gpu: tflops * 1e12 * GPU_UTILISATION / per_sample for gpu, tflops in GPU_FP16_TFLOPS.items()}
    dargs = benchmark_data.parser().parse_args(["--config_file", args.config_file, "--data-root", args.data_root,
                                                "--need", str(round(need["H100 SXM"])), "--device", args.device,
                                                "--epochs", str(args.data_epochs),
                                                *args.opts])
    rows = benchmark_data.run(dargs)
    files = [r for r in rows if r[0] == "uint8, files"][-1]
    for gpu, rate in need.items():  # an estimate: the step rate the GPU's dense fp16 rate implies at 40% utilisation
        emit("data_workers_to_feed", math.ceil(rate / files[3]), "workers per GPU", gpu=gpu, samples_per_s=round(rate),
             note=f"estimate: {GPU_FP16_TFLOPS[gpu]:g} TFLOP/s dense fp16 (published) x {GPU_UTILISATION:.0%} / "
             f"{per_sample / 1e9:.0f} GFLOP per training sample, at {files[3]:.0f} triplets/s per worker core "
             f"(uint8 pipeline from the files, {files[1]} workers)")


def bench_eval(cfg, device):
    sizes, name = reference_sizes(cfg)
    nq, ng = sizes.query, sizes.gallery
    dim = 3072 if cfg.MODEL.SIGNAL.USE_SIM else 1536
    g = torch.Generator().manual_seed(0)
    pids = torch.randint(0, 50, (nq + ng,), generator=g).numpy()
    cams = torch.randint(0, 4, (nq + ng,), generator=g).numpy()
    feats = torch.nn.functional.normalize(torch.randn(nq + ng, dim, generator=g), dim=1)
    spec = dataset_of(cfg)
    ev = Evaluator(nq, use_scenes=spec.protocol_for(cfg) == "scene")
    same = spec.gallery_is_query
    ev.process(feats[:nq] if same else feats, pids[:nq] if same else pids, cams[:nq] if same else cams,
               np.zeros(nq if same else nq + ng))
    t = time.perf_counter()
    ev.evaluate()
    emit("evaluation_seconds", round(time.perf_counter() - t, 3), "s", num_query=nq,
         num_gallery=nq if same else ng, sizes_of=name, note="distances + CMC/mAP/mINP on precomputed features")


# ----------------------------------------------------------------------------------------------------
# Side by side with the official code (reference/official.py)
# ----------------------------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def pk_batch(cfg, b, num_classes, num_cameras):
    """A training batch of P identities x K instances (K = NUM_INSTANCE, at most b / 2), fixed seed."""
    h, w = cfg.INPUT.SIZE_TRAIN
    g = torch.Generator().manual_seed(0)
    k = max(2, min(cfg.DATALOADER.NUM_INSTANCE, b // 2))
    batch = {m: torch.randn(b, 3, h, w, generator=g) for m in MODALITIES}
    batch["pid"] = (torch.arange(b) // k) % num_classes
    batch["camid"] = torch.randint(0, num_cameras, (b,), generator=g)
    return batch


def run_side(cfg, args):
    """One side of the comparison in this process: training steps, inference, peak RSS (JSON lines)."""
    from reference.official import OfficialTraining
    sizes, _ = reference_sizes(cfg)
    num_classes, num_cameras = sizes.train_ids, sizes.cameras
    torch.manual_seed(0)
    model = build_model(cfg, num_classes, num_cameras, pretrained=False).train()
    batch = pk_batch(cfg, args.batch, num_classes, num_cameras)
    images, cams = {m: batch[m] for m in MODALITIES}, batch["camid"]
    if args.run_side == "official":
        ref = OfficialTraining(model, cfg, model.backbone.vit.blocks[0].attn.num_heads)
        del model
        step = lambda: ref.step(batch)  # noqa: E731
        infer = lambda: ref.eval_features(images, cams)  # noqa: E731
    else:
        opt, loss_fn = build_optimizer(cfg, model), build_loss(cfg)
        step = lambda: sum(engine_train_step(model, batch, loss_fn, opt, torch.device("cpu")).values()).detach()  # noqa

        def infer():
            model.eval()
            with torch.no_grad():
                out = model(images, cam_label=cams)
            model.train()
            return out
    try:
        with FlopCounterMode(display=False) as fc:
            first = float(step())
    except ZeroDivisionError:
        raise UsageError("the official LAM divides by (sampling grid size - 1): it needs a sampling grid of at least "
                         "2 x 2; use a larger INPUT.SIZE_TRAIN / INPUT.SIZE_TEST") from None
    cpu = torch.device("cpu")
    times = step_times(step, args.warmup, args.steps, cpu)
    infer_s = float(np.mean(step_times(infer, 1, args.steps, cpu)))
    side = {"side": args.run_side, "keep_freed_memory": bool(cfg.SOLVER.CPU_KEEP_FREED_MEMORY)}
    emit("first_step_loss", first, "", **side)
    emit("train_flops_per_step", fc.get_total_flops(), "FLOP", **side)
    emit("train_step_seconds", round(float(np.median(times)), 4), "s", all=[round(x, 3) for x in times], **side)
    emit("inference_samples_per_s", round(args.batch / infer_s, 3), "samples/s", **side)
    emit("peak_memory", round(peak_memory(cpu), 1), "MiB (max RSS)", **side)


def side_figures(args, side, keep_freed):
    """Run one side in a fresh process -> {figure: record}."""
    cmd = [sys.executable, os.path.abspath(__file__), "--config_file", args.config_file, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", "cpu", "--run-side", side,
           *args.opts, "SOLVER.CPU_KEEP_FREED_MEMORY", "yes" if keep_freed else "no"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode == 2 and r.stderr.startswith("error: "):  # the side refused the config: the same user error
        raise UsageError(f"the {side} side refused the config: {r.stderr[len('error: '):].strip()}")
    if r.returncode != 0:
        raise SystemExit(f"the {side} side failed:\n{r.stderr.strip()[-2000:]}")
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for rec in records:
        print(json.dumps(rec), flush=True)
    return {rec["figure"]: rec for rec in records}


def side_by_side(cfg, args, rate):
    """Every figure, official and ours, then the table."""
    if not backbone_spec(cfg.MODEL.TRANSFORMER_TYPE).official:
        raise UsageError(f"--official: the official code has the CLIP backbone only; MODEL.TRANSFORMER_TYPE is "
                         f"{cfg.MODEL.TRANSFORMER_TYPE!r}, expected one of "
                         f"{', '.join(n for n in backbone_names() if backbone_spec(n).official)}")
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import benchmark_eval
    import benchmark_reranking
    off = side_figures(args, "official", False)
    ours = side_figures(args, "ours", cfg.SOLVER.CPU_KEEP_FREED_MEMORY)
    other = side_figures(args, "ours", not cfg.SOLVER.CPU_KEEP_FREED_MEMORY)
    with_keep, without_keep = (ours, other) if cfg.SOLVER.CPU_KEEP_FREED_MEMORY else (other, ours)
    loss_off, loss_ours = off["first_step_loss"]["value"], ours["first_step_loss"]["value"]
    if abs(loss_off - loss_ours) > 1e-4 * max(1.0, abs(loss_off)):
        raise SystemExit(f"first-step losses differ: official {loss_off}, ours {loss_ours}")
    nq, ng = args.eval_size
    feats = benchmark_eval.features(nq, ng, 3072, 50, 8)
    ev = benchmark_eval.compare(*feats, repeat=args.eval_repeat)
    emit("evaluation_seconds", round(ev["ours"], 3), "s", official=round(ev["official"], 3),
         identical_results=ev["identical"], num_query=nq, num_gallery=ng)
    q, gal = benchmark_reranking.clustered(nq, ng, 512, 50)
    rr = benchmark_reranking.compare(q, gal, 20, 6, 0.3, torch.device("cpu"), args.eval_repeat, 1)
    emit("re_ranking_seconds", round(rr["ours"], 3), "s", official=round(rr["official"], 3),
         max_abs_difference=rr["max_abs_difference"], num_query=nq, num_gallery=ng)
    b = args.batch
    t_off = off["train_step_seconds"]["value"]
    rows = [
        (f"training step, batch {b}, fp32 (median of {args.steps})", f"{t_off:.2f} s",
         f"{with_keep['train_step_seconds']['value']:.2f} s", t_off / with_keep["train_step_seconds"]["value"]),
        ("same, ours without SOLVER.CPU_KEEP_FREED_MEMORY", f"{t_off:.2f} s",
         f"{without_keep['train_step_seconds']['value']:.2f} s", t_off / without_keep["train_step_seconds"]["value"]),
        (f"inference, batch {b}", f"{off['inference_samples_per_s']['value']:.2f} samples/s",
         f"{ours['inference_samples_per_s']['value']:.2f} samples/s",
         ours["inference_samples_per_s"]["value"] / off["inference_samples_per_s"]["value"]),
        (f"evaluation, distances + CMC/mAP/mINP, {nq} x {ng}", f"{ev['official']:.2f} s", f"{ev['ours']:.2f} s",
         ev["official"] / ev["ours"]),
        (f"k-reciprocal re-ranking, {nq} x {ng}", f"{rr['official']:.2f} s", f"{rr['ours']:.2f} s",
         rr["official"] / rr["ours"]),
        ("peak memory (max RSS), training + inference", f"{off['peak_memory']['value'] / 1024:.2f} GiB",
         f"{ours['peak_memory']['value'] / 1024:.2f} GiB", off["peak_memory"]["value"] / ours["peak_memory"]["value"]),
    ]
    print(f"\n{benchmark_eval.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; fp32 matmul "
          f"{rate / 1e9:.1f} GFLOP/s; ours with SOLVER.CPU_KEEP_FREED_MEMORY "
          f"{'yes' if cfg.SOLVER.CPU_KEEP_FREED_MEMORY else 'no'} unless stated; first-step loss official "
          f"{loss_off:.6f}, ours {loss_ours:.6f}\n")
    print("| figure | official | ours | official / ours |\n|---|---|---|---|")
    for name, o, u, ratio in rows:
        print(f"| {name} | {o} | {u} | {ratio:.2f}x |")
    flops = ours["train_flops_per_step"]["value"]
    floor = flops / rate
    print(f"\nThe training step is {flops / 1e12:.3f} TFLOP on both sides (official "
          f"{off['train_flops_per_step']['value'] / 1e12:.3f}); at the measured fp32 matmul rate that takes at least "
          f"{floor:.2f} s, so no fp32 implementation of the same computation can be more than {t_off / floor:.2f}x "
          f"faster than the official step on this machine.")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default="configs/RGBNT201/Signal.yml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--data-root", default="./datasets")
    p.add_argument("--data-epochs", type=int, default=5, help="timed epochs of each loader setting (median)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: model,data,eval")
    p.add_argument("--official", action="store_true",
                   help="every figure side by side with the official code (reference/official.py), CPU")
    size = evaluation_reference().sizes  # the largest test split of the paper (RGBNT100)
    p.add_argument("--eval-size", type=int, nargs=2, default=[size.query, size.gallery], metavar=("QUERY", "GALLERY"),
                   help="--official: evaluation and re-ranking size (default RGBNT100's)")
    p.add_argument("--eval-repeat", type=int, default=3, help="--official: evaluation runs (best of)")
    p.add_argument("--run-side", choices=["official", "ours"], help=argparse.SUPPRESS)
    p.add_argument("opts", nargs="*")
    args = p.parse_intermixed_args()
    cfg = load_config(args.config_file, args.opts + ["MODEL.PRETRAIN_PATH", ""])
    device = torch.device(args.device)
    if args.official and device.type != "cpu":
        raise UsageError("--official compares on the CPU (the official transcription runs there); add --device cpu")
    if device.type == "cpu" and cfg.SOLVER.CPU_KEEP_FREED_MEMORY:
        keep_freed_memory()
    if args.run_side:
        return run_side(cfg, args)
    skip = set(filter(None, args.skip.split(",")))
    amp_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = amp_dtypes.get(amp_mode(cfg, device), torch.float32)
    rate = matmul_rate(device, dtype)
    emit("matmul_rate", round(rate / 1e9, 2), "GFLOP/s", dtype=str(dtype), device=str(device),
         threads=torch.get_num_threads(),
         device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if args.official:
        return side_by_side(cfg, args, rate)
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
