"""tools/gpu_memory.py: the memory estimate checked where it can be measured (the CPU), and its CLI."""
import json
import os
import sys

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from config import load_config
from modeling import MODALITIES, build_loss, build_model
from solver import build_optimizer
from utils import fake_cuda

from .conftest import ROOT, TINY
from .helpers import python

pytestmark = pytest.mark.skipif(not fake_cuda.available(), reason="the estimate needs torch >= 2.3")
sys.path.insert(0, os.path.join(ROOT, "tools"))


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of tensor storages alive after each op (each storage once), and their peak: what the step
    holds in tensors, measured while it runs."""

    def __init__(self, *tensors):
        super().__init__()
        self.live = {}
        self.peak = 0
        for t in tensors:
            self._add(t)
        self._update()

    def _add(self, t):
        s = t.untyped_storage()
        self.live.setdefault(StorageWeakRef(s), s.nbytes())

    def _update(self):
        for ref in [r for r in self.live if r.expired()]:
            del self.live[ref]
        self.peak = max(self.peak, sum(self.live.values()))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self._update()
        return out


@pytest.mark.parametrize("checkpointing", ["no", "yes"])
def test_cpu_estimate_matches_the_measured_peak_of_a_step(checkpointing):
    """fp32 on the CPU, a small model (manual attention, the same ops on fake and real tensors): the estimate
    is within 15% of the peak tensor memory measured during a real training step (forward, backward, Adam)."""
    import gpu_memory
    opts = [*TINY, "MODEL.CUSTOM_VIT.EMBED_DIM", "192", "MODEL.CUSTOM_VIT.DEPTH", "4", "MODEL.CUSTOM_VIT.NUM_HEADS",
            "4", "MODEL.CUSTOM_VIT.OUT_DIM", "128", "MODEL.FUSED_ATTN", "no", "MODEL.GRAD_CHECKPOINT", checkpointing,
            "INPUT.SIZE_TRAIN", "[128,64]", "INPUT.SIZE_TEST", "[128,64]", "DATALOADER.NUM_INSTANCE", "4"]
    cfg = load_config("", opts)
    batch = 16
    est = gpu_memory.estimate(cfg, batch, "none", "cpu", num_classes=20, num_cameras=3)

    torch.manual_seed(0)
    model = build_model(cfg, 20, 3).train()
    optimizer, loss_fn = build_optimizer(cfg, model), build_loss(cfg)
    images = {m: torch.randn(batch, 3, 128, 64) for m in MODALITIES}
    pid, cams = torch.arange(batch) // 4, torch.zeros(batch, dtype=torch.long)

    def step():
        optimizer.zero_grad(set_to_none=True)
        sum(loss_fn(model(images, cam_label=cams), pid).values()).backward()
        optimizer.step()

    step()  # Adam's moments exist from the first step on
    tracker = LiveTensorBytes(*model.parameters(), *model.buffers(), *images.values(),
                              *[t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)])
    with tracker:
        step()
    assert abs(est["train_peak"] - tracker.peak) <= 0.15 * tracker.peak, (est, tracker.peak)


def test_full_size_recipe_and_checkpointing_cuts_it():
    """The RGBNT201 recipe at batch 64 under fp16: saved activations as counted for 64 x 3 ViT-B/16 passes, and
    gradient checkpointing cuts the estimated peak by at least 40%."""
    import gpu_memory
    path = os.path.join(ROOT, "configs", "RGBNT201", "Signal.yml")
    plain = gpu_memory.estimate(load_config(path), 64, "fp16")
    ck = gpu_memory.estimate(load_config(path, ["MODEL.GRAD_CHECKPOINT", "yes"]), 64, "fp16")
    assert 7 < plain["train"]["saved_activations"] / 2 ** 30 < 10
    assert ck["train_peak"] <= 0.6 * plain["train_peak"]
    assert plain["eval_peak"] < plain["train_peak"]


def test_cli_prints_the_parts_and_the_largest_batch_that_fits(tmp_path):
    r = python(os.path.join(ROOT, "tools", "gpu_memory.py"), "--config_file",
               os.path.join(ROOT, "configs", "Synthetic", "demo.yml"), "--gpu-mem", "0.75", cwd=tmp_path)
    figures = {d["figure"]: d for d in map(json.loads, r.stdout.splitlines())}
    parts = [k for k in figures if k.startswith("train_")]
    assert len(parts) == 7 and figures["peak_gib"]["value"] == pytest.approx(
        sum(figures[k]["value"] for k in parts), abs=0.01)
    k = 4  # the demo's DATALOADER.NUM_INSTANCE
    best = figures["largest_batch"]["value"]
    assert best >= 2 * k and best % k == 0
    import gpu_memory
    est = gpu_memory.MemoryEstimate(load_config(os.path.join(ROOT, "configs", "Synthetic", "demo.yml")))
    assert gpu_memory.fits(sum(est.train(best).values()), 0.75)
    assert not gpu_memory.fits(sum(est.train(best + k).values()), 0.75)
