"""The CUDA mixed-precision recipe run on the CPU (SOLVER.AMP_ON_CPU): fp16 autocast with a GradScaler."""
import json
import os
import sys

import pytest

from utils.versions import torch_version

from .conftest import ROOT

import train  # noqa: E402

DEMO = os.path.join(ROOT, "configs", "Synthetic", "demo.yml")


@pytest.mark.skipif(torch_version() < (2, 3), reason="CPU fp16 autocast and a CPU GradScaler need torch >= 2.3")
def test_demo_under_fp16_and_grad_scaler_keeps_its_loss_scale(tmp_path, monkeypatch):
    """The demo's first 4 epochs under fp16 autocast + GradScaler: after the scaler's first-epoch calibration
    no step is skipped and the scale stays >= 2^10, logged per epoch. With the official precision of GAM
    (SOLVER.AMP_FP32_LOSSES no) this run skips steps from epoch 4 on (docs/reproduction.md, Differences from the paper)."""
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--config_file", DEMO, "MODEL.DEVICE", "cpu", "SOLVER.AMP", "fp16", "SOLVER.AMP_ON_CPU", "yes",
        "SOLVER.MAX_EPOCHS", "12", "DATASETS.ROOT_DIR", str(tmp_path / "data"), "OUTPUT_DIR", str(out),
        "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_BEFORE_TRAIN", "no", "SOLVER.EVAL_PERIOD", "0",
        "LOG.PROGRESS_BARS", "no"])
    from data.samplers import IdentitySampler
    original = IdentitySampler.set_epoch

    def stop_after_epoch_4(self, epoch, *args, **kwargs):  # the 12-epoch schedule of the README's run, cut after 4 epochs
        if epoch == 5:
            raise KeyboardInterrupt
        original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(IdentitySampler, "set_epoch", stop_after_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train.main()
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(isinstance(r["loss_scale"], float) and isinstance(r["skipped_steps"], int) for r in records)
    assert [r["skipped_steps"] for r in records[1:]] == [0, 0, 0], records
    assert records[-1]["loss_scale"] >= 2 ** 10
    log = open(out / "train_log.txt").read()
    assert "Epoch 4: loss scale" in log
