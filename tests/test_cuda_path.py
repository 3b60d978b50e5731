"""The CUDA training path, checked without a GPU: the full-size RGBNT201 model's training forward and loss
on fake CUDA tensors (torch's FakeTensorMode) under the real CUDA fp16 autocast policy. Every op is recorded
with its inputs' devices and its output dtype, so a host-to-device copy, a device mismatch or a matmul at the
wrong precision shows without a driver."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from config import load_config
from engine import make_grad_scaler, train_step
from modeling import build_loss, build_model
from solver import build_optimizer
from utils import fake_cuda

from .conftest import ROOT, TINY

SIGNAL_201 = os.path.join(ROOT, "configs", "RGBNT201", "Signal.yml")
MATMULS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten.convolution.")

needs_fake_cuda = pytest.mark.skipif(not fake_cuda.available(), reason="FakeTensorMode on device 'cuda' without "
                                     "a CUDA driver needs torch >= 2.3 (older versions initialise CUDA)")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class OpRecorder(TorchDispatchMode):
    """Records (region, op, input tensors as (device, dtype, dim), output dtypes) of every op dispatched."""

    def __init__(self):
        super().__init__()
        self.ops, self.region = [], "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [(a.device.type, a.dtype, a.dim()) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [(a.device.type, a.dtype) for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
        self.ops.append((self.region, str(func), ins, outs))
        return out

    def mark(self, module, name):
        """Ops run inside ``module``'s forward are recorded under ``name``."""
        module.register_forward_pre_hook(lambda *_: setattr(self, "region", name))
        module.register_forward_hook(lambda *_: setattr(self, "region", "other"))

    def matmuls(self, region):
        return [(op, outs[0][1]) for r, op, _, outs in self.ops if r == region and op.startswith(MATMULS)]


class SdpaRecorder(torch.overrides.TorchFunctionMode):
    """The dtypes of F.scaled_dot_product_attention's inputs. Without a GPU it decomposes into the math
    kernel, which upcasts to fp32 (flash attention on a GPU does not): ``ops``' region is 'attention' there."""

    def __init__(self, ops):
        super().__init__()
        self.dtypes, self.ops = [], ops

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        self.dtypes.append(tuple(a.dtype for a in args[:3]))
        region, self.ops.region = self.ops.region, "attention"
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.ops.region = region


def fake_cuda_training_forward(*opts, batch=8):
    """The recorded training forward + loss of the full-size RGBNT201 model on fake CUDA tensors under fp16
    autocast. Returns (op recorder, SDPA input dtypes, loss terms)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    cfg = load_config(SIGNAL_201, ["MODEL.DEVICE", "cuda", *opts])
    model = build_model(cfg, 171, 15, pretrained=False).train()
    loss_fn = build_loss(cfg)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_cuda.to_fake(model, mode, "cuda")
    rec = OpRecorder()
    sdpa = SdpaRecorder(rec)
    rec.mark(model.backbone, "backbone")
    rec.mark(model.gam, "gam")
    rec.mark(loss_fn.triplet, "triplet")
    # cuDNN's grid sampler has no fake kernel; the native one (same maths) stands in for it.
    with mode, torch.backends.cudnn.flags(enabled=False):
        images = {m: torch.randn(batch, 3, *cfg.INPUT.SIZE_TRAIN, device="cuda") for m in ("RGB", "NI", "TI")}
        pid = torch.arange(batch // 2, device="cuda").repeat_interleave(2)
        cams = torch.zeros(batch, dtype=torch.long, device="cuda")
        with fake_cuda.autocast("cuda", torch.float16), rec, sdpa:
            losses = loss_fn(model(images, cam_label=cams), pid)
            sum(losses.values())
    return rec, sdpa.dtypes, losses


@needs_fake_cuda
def test_full_size_training_forward_on_cuda_has_no_host_copy_and_fp32_losses():
    rec, sdpa, losses = fake_cuda_training_forward()
    assert set(losses) == {"id_global", "tri_global", "id_sim", "tri_sim", "gam", "lam"}
    # No tensor of the step lives on the host: no host-to-device copy, no op mixing devices (a 0-dim CPU tensor
    # would be a kernel argument, not a copy, and is allowed).
    on_host = [(op, ins) for _, op, ins, outs in rec.ops
               if any(d == "cpu" and dim > 0 for d, _, dim in ins) or any(d == "cpu" for d, _ in outs)]
    assert not on_host, on_host[:5]
    # The backbone's linear layers, patch embedding and attention run in fp16 ...
    backbone = rec.matmuls("backbone")
    assert len(backbone) >= 12 * 4 and {dt for _, dt in backbone} == {torch.float16}, backbone
    assert len(sdpa) >= 12 and set(sdpa) == {(torch.float16,) * 3}, sdpa
    # ... GAM's Gram entries and the triplet distances in fp32.
    for region in ("gam", "triplet"):
        mm = rec.matmuls(region)
        assert mm and {dt for _, dt in mm} == {torch.float32}, (region, mm)


@needs_fake_cuda
def test_official_precision_switch_runs_the_loss_matmuls_in_fp16():
    rec, _, _ = fake_cuda_training_forward("SOLVER.AMP_FP32_LOSSES", "no")
    for region in ("gam", "triplet"):
        mm = rec.matmuls(region)
        assert mm and {dt for _, dt in mm} == {torch.float16}, (region, mm)


# ---------------------------------------------------------------------------------------------------
# On a CUDA GPU (skipped without one)
# ---------------------------------------------------------------------------------------------------

def cuda_batch(cfg, ids=4, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = ids * k
    batch = {m: torch.randn(n, 3, *cfg.INPUT.SIZE_TRAIN, generator=g) for m in ("RGB", "NI", "TI")}
    batch.update(pid=torch.arange(ids).repeat_interleave(k), camid=torch.randint(0, 3, (n,), generator=g))
    return {k: v.cuda() for k, v in batch.items()}


@needs_gpu
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_full_size_training_steps_on_cuda(amp):
    """Three steps of the full-size RGBNT201 model at batch 8: finite losses, a loss scale that did not
    collapse (fp16), and no host synchronisation in a step once warmed up (torch raises on one)."""
    if amp == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no bfloat16 (compute capability < 8.0)")
    cfg = load_config(SIGNAL_201, ["MODEL.DEVICE", "cuda", "SOLVER.AMP", amp])
    device = torch.device("cuda")
    model = build_model(cfg, 171, 15, pretrained=False).to(device).train()
    optimizer, loss_fn = build_optimizer(cfg, model), build_loss(cfg)
    scaler = make_grad_scaler(device, amp)
    skipped = torch.zeros((), dtype=torch.int64, device=device)
    batch = cuda_batch(cfg)
    for _ in range(2):
        train_step(model, batch, loss_fn, optimizer, device, amp, scaler, skipped)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = train_step(model, batch, loss_fn, optimizer, device, amp, scaler, skipped)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).item() for v in losses.values()), losses
    if scaler is not None:
        assert scaler.get_scale() >= 2 ** 10 and int(skipped) <= 2


@needs_gpu
def test_cpu_and_cuda_features_agree(tiny_cfg):
    """The tiny model's evaluation features on the CPU and on CUDA (fp32; fp16 autocast within fp16 rounding)."""
    from engine import autocast_context
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg, 6, 3).eval()
    batch = cuda_batch(cfg)
    images = {m: batch[m] for m in ("RGB", "NI", "TI")}
    with torch.no_grad():
        cpu = model({m: x.cpu() for m, x in images.items()}, cam_label=batch["camid"].cpu())
        model.cuda()
        cuda = model(images, cam_label=batch["camid"]).cpu()
        with autocast_context(torch.device("cuda"), "fp16"):
            half = model(images, cam_label=batch["camid"]).float().cpu()
    assert torch.allclose(cpu, cuda, atol=1e-4), (cpu - cuda).abs().max()
    assert torch.allclose(cpu, half, atol=2e-2), (cpu - half).abs().max()


def _train_cli(tmp_path, synth_root, *opts, nproc=1):
    import json
    import subprocess
    import sys
    out = tmp_path / "out"
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--nproc_per_node", str(nproc)]
    cmd = [*launcher, os.path.join(ROOT, "train.py"), *TINY[:-2], "MODEL.DEVICE", "cuda", "DATASETS.ROOT_DIR",
           synth_root, "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1",
           "LOG.PROGRESS_BARS", "no", *opts]
    r = subprocess.run(cmd, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


@needs_gpu
def test_compiled_model_trains_on_cuda(tmp_path, synth_root):
    records = _train_cli(tmp_path, synth_root, "MODEL.COMPILE", "yes")
    assert [r["epoch"] for r in records] == [1, 2] and all("mAP" in r and r["loss_scale"] >= 2 ** 10 for r in records)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_torchrun_demo_on_two_gpus(tmp_path, synth_root):
    records = _train_cli(tmp_path, synth_root, nproc=2)
    assert [r["epoch"] for r in records] == [1, 2] and all("mAP" in r for r in records)
