import json
import os
import sys

import pytest
import torch

from .conftest import ROOT, TINY
from .helpers import python, result_file

import train  # noqa: E402


def run_train_inprocess(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"] + argv)
    train.main()


def run_interrupted_at_epoch_2(argv, monkeypatch):
    """Run train.py in-process and stop it (KeyboardInterrupt) as epoch 2 begins."""
    from data.samplers import IdentitySampler
    original = IdentitySampler.set_epoch

    def interrupt(self, epoch, *args, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch, *args, **kwargs)

    monkeypatch.setattr(IdentitySampler, "set_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_train_inprocess(argv, monkeypatch)
    monkeypatch.setattr(IdentitySampler, "set_epoch", original)


def opts(synth_root, out, *extra):
    return TINY + ["DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCHS", "2",
                   "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.001", "SOLVER.EVAL_PERIOD", "1",
                   "SOLVER.DETERMINISTIC", "yes", "INPUT.RE_PROB", "0.5"] + list(extra)


def test_train_then_test_through_the_command_line(synth_root, tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = python(os.path.join(ROOT, "train.py"), *opts(synth_root, out), "TEST.EVAL_BEFORE_TRAIN", "yes", cwd=tmp_path,
               env=env)
    for name in ("last.pth", "best.pth", "config.yaml", "train_log.txt", "metrics.jsonl", "summary.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss", "id_global", "tri_global", "id_sim", "tri_sim", "gam", "lam", "mAP", "Rank-1"} <= set(records[0])
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert {"before_training", "last_epoch", "best"} <= set(summary)
    log = open(os.path.join(out, "train_log.txt")).read()
    assert "Before training" in log and "Best epoch" in log
    config_before = open(os.path.join(out, "config.yaml")).read()
    for extra, tag in [([], "test_best_Synthetic"), (["TEST.RE_RANKING", "yes"], "test_best_Synthetic_rerank20-6-0.3"),
                       (["TEST.MISS", "nt", "TEST.IMS_PER_BATCH", "7"], "test_best_Synthetic_miss-nt")]:
        r = python(os.path.join(ROOT, "test.py"), *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out,
                   "TEST.WEIGHT", os.path.join(out, "best.pth"), *extra, "--save-features",
                   *([tmp_path / "f.npz"] if extra else []), cwd=tmp_path, env=env)
        metrics = json.load(open(result_file(out, tag)))
        assert 0.0 <= metrics["mAP"] <= 1.0 and {"Rank-1", "Rank-5", "Rank-10", "mINP"} <= set(metrics)
        assert "mAP" in r.stdout
        assert metrics["config"]["TEST"]["MISS"] == ("nt" if "nt" in extra else "")
    assert open(os.path.join(out, "config.yaml")).read() == config_before   # the training record is untouched
    import numpy as np
    f = np.load(tmp_path / "f.npz")
    assert f["features"].shape[0] == len(f["pids"]) == len(f["paths"])
    beside = result_file(out, "test_best_Synthetic")[:-len(".json")] + ".npz"  # the bare flag: next to the result
    assert np.load(beside)["features"].shape == f["features"].shape
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".npz") and p != "f.npz"]


def test_test_py_without_weight_fails_clearly(synth_root, tmp_path):
    r = python(os.path.join(ROOT, "test.py"), *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", tmp_path,
               cwd=tmp_path, expect=2, env=dict(os.environ, PYTHONPATH=ROOT))
    assert "TEST.WEIGHT" in r.stderr


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_seeded_runs_are_identical(synth_root, tmp_path, monkeypatch):
    run_train_inprocess(opts(synth_root, str(tmp_path / "a")), monkeypatch)
    run_train_inprocess(opts(synth_root, str(tmp_path / "b")), monkeypatch)
    a, b = _weights(tmp_path / "a" / "last.pth"), _weights(tmp_path / "b" / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run_train_inprocess(opts(synth_root, str(tmp_path / "c"), "SOLVER.SEED", "7"), monkeypatch)
    c = _weights(tmp_path / "c" / "last.pth")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupted_run_resumes_to_the_same_weights(synth_root, tmp_path, monkeypatch):
    run_train_inprocess(opts(synth_root, str(tmp_path / "full")), monkeypatch)
    run_interrupted_at_epoch_2(opts(synth_root, str(tmp_path / "cut")), monkeypatch)
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=False)["epoch"] == 1
    run_train_inprocess(["--resume"] + opts(synth_root, str(tmp_path / "cut")), monkeypatch)
    a, b = _weights(tmp_path / "full" / "last.pth"), _weights(tmp_path / "cut" / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_ids_select_the_best_epoch_without_the_test_set(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "val"
    run_train_inprocess(opts(synth_root, str(out), "DATASETS.VAL_IDS", "2"), monkeypatch)
    summary = json.load(open(out / "summary.json"))
    assert {"test_last_epoch", "test_best_epoch", "best"} <= set(summary)
    log = open(out / "train_log.txt").read()
    assert "held-out validation samples" in log
    ck = torch.load(out / "last.pth", weights_only=False)
    assert ck["model"]["classifier.weight"].shape[0] == 4      # 6 training ids - 2 held out


def test_non_finite_loss_stops_the_run_with_the_loss_terms(tiny_cfg, tmp_path):
    from data import build_dataloaders
    from engine import NonFiniteLossError, do_train
    from modeling import build_model
    from solver import build_optimizer, build_scheduler
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path))
    train_loader, test_loader, nq, nc, ncam = build_dataloaders(cfg)
    model = build_model(cfg, nc, ncam)
    opt = build_optimizer(cfg, model)

    def bad_loss(outputs, target):
        s = outputs["heads"]["global"]["score"].sum()
        return {"id_global": s * 0 + float("nan"), "tri_global": s * 0}

    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 1: \{'id_global': nan, 'tri_global': -?0.0\}"):
        do_train(cfg, model, train_loader, test_loader, nq, opt, build_scheduler(cfg, opt), bad_loss,
                 torch.device("cpu"))


@pytest.mark.parametrize("layout,extra", [
    ("RGBNT100", ["MODEL.DIRECT", "0", "SOLVER.WARMUP_ITERS", "1"]),
    ("MSVR310", ["MODEL.DIRECT", "0", "SOLVER.SCHEDULER", "multistep", "SOLVER.STEPS", "[1]",
                 "SOLVER.WARMUP_ITERS", "0", "SOLVER.CLASSIFIER_LR_FACTOR", "100.0"]),
    ("WMVeID863", ["MODEL.DIRECT", "0", "SOLVER.WARMUP_ITERS", "1"]),
    ("Market1501-MM", ["MODEL.DIRECT", "0", "SOLVER.WARMUP_ITERS", "1"]),
])
def test_training_on_the_other_layouts(tmp_path, monkeypatch, layout, extra):
    from data.datasets import write_synthetic
    root = write_synthetic(str(tmp_path / "data"), layout, num_train_ids=6, num_test_ids=4, images_per_id=4,
                           num_cameras=3, size=(64, 32))
    out = tmp_path / "out"
    run_train_inprocess(TINY + ["DATASETS.NAMES", layout, "DATASETS.ROOT_DIR", root, "OUTPUT_DIR", str(out),
                                "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1"] + extra, monkeypatch)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2] and all(0 <= r["mAP"] <= 1 for r in records)
    assert {"id_RGB", "id_NI", "id_TI", "id_sim"} <= set(records[0])
