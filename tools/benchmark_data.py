"""Training-loader throughput: the loader train.py builds, on JPEGs at the config's input size written in the
config's dataset layout, with 0, 1 and N DataLoader workers, from the files and from the decoded cache
(DATALOADER.CACHE ram), beside the float32 pipeline that decodes with PIL and augments on the CPU
(reference/transforms.py, the loader before the uint8 pipeline), and, with one worker from the files, the uint8
pipeline with PIL's decoder (when another is chosen) and with torch's collate instead of the reused buffers.

    python tools/benchmark_data.py --config_file configs/RGBNT201/Signal.yml [--workers N] [--epochs 3]

One JSON line per setting: triplets/s (the median over the timed epochs; one sample = one image per modality), triplets/s per worker core
(the main process is the one core without workers), and the worker cores an H100 step would need at the
rate ``tools/benchmark.py`` derives from the step's FLOPs (``--need``, default 1,959 triplets/s for the
RGBNT201 recipe: 989 TFLOP/s dense fp16 x 40% / 202 GFLOP per triplet). The device half of the pipeline
(normalisation and random erasing of a batch) is timed on ``--device`` and reported apart: on a GPU it is not
a worker's work. Ends with a Markdown table.
"""
import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from data import build_dataloaders, read_image  # noqa: E402
from data.datasets import synthetic_layouts, write_synthetic  # noqa: E402
from engine.setup import run_cli  # noqa: E402

H100_NEED = 1959  # triplets/s: tools/benchmark.py's data_workers_to_feed for the RGBNT201 recipe on an H100 SXM


def emit(figure, value, unit, **extra):
    print(json.dumps({"figure": figure, "value": value, "unit": unit, **extra}), flush=True)


def benchmark_config(args):
    """The config with DATASETS.ROOT_DIR at a benchmark written in its layout (RGBNT201's when its dataset has
    no synthetic writer), JPEGs at INPUT.SIZE_TRAIN; ``(cfg, layout)``."""
    cfg = load_config(args.config_file, args.opts)
    layout = cfg.DATASETS.NAMES if cfg.DATASETS.NAMES in synthetic_layouts() else "RGBNT201"
    h, w = cfg.INPUT.SIZE_TRAIN
    root = os.path.join(args.data_root, f"loader_bench_{layout}_{h}x{w}_{args.ids}x{args.per_id}")
    write_synthetic(root, layout, num_train_ids=args.ids, num_test_ids=2, images_per_id=args.per_id,
                    num_cameras=2, size=(h, w))
    cfg = load_config(args.config_file, args.opts + ["DATASETS.NAMES", layout, "DATASETS.ROOT_DIR", root,
                                                     "DATASETS.VAL_IDS", "0"])
    return cfg, layout


def with_opts(cfg, **keys):
    """A copy of ``cfg`` with ``keys`` ({dotted key: value}) merged as on the command line."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([x for k, v in keys.items() for x in (k, str(v))])
    cfg.freeze()
    return cfg


def time_loader(loader, epochs):
    """(median triplets/s of ``epochs`` epochs after a first, untimed one that starts the workers, last batch)."""
    batch, rates = None, []
    for epoch in range(epochs + 1):
        loader.sampler.set_epoch(epoch)
        t, n = time.perf_counter(), 0
        for batch in loader:
            n += len(batch["pid"])
        if epoch:
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates), batch


@contextlib.contextmanager
def seeded(seed):
    py = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py)


class FloatDataset(Dataset):
    """The loader before the uint8 pipeline: PIL decode, the float32 transforms on the CPU per sample, seeded
    from the sampler's seed; collated as float32."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        index, seed = index
        s = self.base.samples[index]
        images = {m: read_image(p) for m, p in zip(self.base.modalities, s.paths)}
        with seeded(seed):
            item = self.transform(images)
        item.update(pid=s.pid, camid=s.camid)
        return item


def float_loader(loader, cfg, workers):
    from reference.transforms import FloatTransform
    i = cfg.INPUT
    t = FloatTransform(i.SIZE_TRAIN, True, i.PIXEL_MEAN, i.PIXEL_STD, i.PROB, i.PADDING, i.RE_PROB, i.SHARED_AUG_PARAMS)
    return DataLoader(FloatDataset(loader.dataset, t), batch_size=loader.batch_size, sampler=loader.sampler,
                      drop_last=True, num_workers=workers, persistent_workers=workers > 0)


def use_pil(loader):
    loader.dataset.jpeg = None


def use_torchs_collate(loader):
    loader.collate_fn = default_collate


def device_ms(loader, batch, device, repeat=5):
    """Milliseconds of the device half (copy, float, normalise, erase) of one batch on ``device``."""
    mods = loader.dataset.modalities
    loader.dataset.to_device(batch, mods, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        loader.dataset.to_device(batch, mods, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat * 1e3


def run(args):
    cfg, layout = benchmark_config(args)
    h, w = cfg.INPUT.SIZE_TRAIN
    n_workers = args.workers or max(2, min(8, os.cpu_count() or 1))
    base = dict(layout=layout, size=f"{h}x{w}", batch=cfg.SOLVER.IMS_PER_BATCH, torch=torch.__version__)
    rows = []

    def record(name, workers, rate, **extra):
        cores = max(1, workers)
        per_core = rate / cores
        need = math.ceil(args.need / per_core)
        emit("loader_triplets_per_s", round(rate, 1), "triplets/s", pipeline=name, workers=workers,
             per_worker_core=round(per_core, 1), cores_for_h100=need, **base, **extra)
        rows.append((name, workers, rate, per_core, need))

    for workers in sorted({0, 1, n_workers}):
        old = float_loader(build_dataloaders(with_opts(cfg, **{"DATALOADER.NUM_WORKERS": workers}), verify=False)[0],
                           cfg, workers)
        record("float32, PIL, CPU augmentation (before)", workers, time_loader(old, args.epochs)[0])
        del old
    last = None
    for cache in ("none", "ram"):
        for workers in sorted({0, 1, n_workers}):
            t = time.perf_counter()
            c = with_opts(cfg, **{"DATALOADER.NUM_WORKERS": workers, "DATALOADER.CACHE": cache})
            loader = build_dataloaders(c, verify=False)[0]
            built = time.perf_counter() - t
            rate, batch = time_loader(loader, args.epochs)
            decoder = getattr(loader.dataset.jpeg, "__name__", "PIL")
            extra = {"cache_build_s": round(built, 2)} if cache == "ram" else {"decoder": decoder}
            record(f"uint8, {'cache' if cache == 'ram' else 'files'}", workers, rate, **extra)
            last = loader, batch
    # What the decoder and the workers' reused buffers each give: one worker from the files without either.
    ablations = [("PIL decode", use_pil)] if decoder != "PIL" else []
    for name, change in ablations + [("torch's collate", use_torchs_collate)]:
        loader = build_dataloaders(with_opts(cfg, **{"DATALOADER.NUM_WORKERS": 1}), verify=False)[0]
        change(loader)
        record(f"uint8, files, {name}", 1, time_loader(loader, args.epochs)[0])
        del loader
    ms = device_ms(*last, torch.device(args.device))
    emit("device_half_ms_per_batch", round(ms, 2), "ms", device=args.device, note="copy + float + normalise + "
         "random erasing of one batch, on the device that trains", **base)
    print(f"\n{layout} layout, JPEGs at {h}x{w}, batch {cfg.SOLVER.IMS_PER_BATCH}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, JPEG decoder of the uint8 pipeline: {decoder}; an H100 step needs "
          f"~{args.need} triplets/s\n")
    print("| pipeline | workers | triplets/s | per worker core | cores for an H100 |\n|---|---|---|---|---|")
    for name, workers, rate, per_core, need in rows:
        print(f"| {name} | {workers} | {rate:.0f} | {per_core:.0f} | {need} |")
    print(f"\nDevice half on {args.device}: {ms:.1f} ms per batch.")
    return rows


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default="configs/RGBNT201/Signal.yml")
    p.add_argument("--data-root", default="./datasets")
    p.add_argument("--workers", type=int, default=0, help="N (default: the CPU cores, 2 to 8)")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs after a first one (their median)")
    p.add_argument("--ids", type=int, default=64, help="identities of the benchmark's training split")
    p.add_argument("--per-id", type=int, default=8, help="images per identity")
    p.add_argument("--need", type=int, default=H100_NEED, help="triplets/s an H100 step needs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("opts", nargs="*")
    return p


def main():
    run(parser().parse_intermixed_args())


if __name__ == "__main__":
    run_cli(main)
