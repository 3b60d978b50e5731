"""TEST.MISS all: one pass gives the full input, the six missing-modality settings and their average, each
equal to a single-setting evaluation; TensorBoard and progress-bar switches."""
import json
import os
import sys

import pytest
import torch

from data import build_dataloaders
from engine import (MISS_SETTINGS, any_to_any_table, encode, evaluate_any_to_any, evaluate_missing, evaluate_model,
                    missing_table)
from modeling import build_model

from .conftest import TINY
from .helpers import result_file

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_root):
    """A briefly trained tiny model (random features would make every setting look alike)."""
    from .test_end_to_end import opts
    import train
    out = str(tmp_path_factory.mktemp("miss") / "run")
    argv = sys.argv
    sys.argv = ["train.py"] + opts(synth_root, out, "SOLVER.MAX_EPOCHS", "3")
    try:
        train.main()
    finally:
        sys.argv = argv
    return out


def test_miss_all_equals_the_single_settings(tiny_cfg, trained):
    cfg = tiny_cfg()
    _, loader, nq, ncls, ncam = build_dataloaders(cfg)
    model = build_model(cfg, ncls, ncam, pretrained=False)
    model.load_state_dict(torch.load(os.path.join(trained, "best.pth"), weights_only=False)["model"])
    device = torch.device("cpu")
    results, _ = evaluate_missing(cfg, model, loader, nq, device)
    assert set(MISS_SETTINGS) | {"average"} <= set(results)
    for s in MISS_SETTINGS:
        single, _ = evaluate_model(cfg, model, loader, nq, device, miss="" if s == "none" else s)
        assert all(results[s][k] == single[k] for k in METRICS), s
    for k in METRICS:
        assert results["average"][k] == pytest.approx(sum(results[s][k] for s in MISS_SETTINGS[1:]) / 6)
    assert len({round(results[s]["mAP"], 6) for s in MISS_SETTINGS}) > 1
    table = missing_table(results).splitlines()
    assert table[0].startswith("| metric | Full | M (RGB) | M (NIR) | M (TIR) | M (RGB+NIR) | M (RGB+TIR) | M (NIR+TIR)")
    assert [line.split(" | ")[0] for line in table[2:]] == ["| " + k for k in METRICS]
    assert f"{100 * results['rt']['Rank-1']:.1f}" in table[3].split(" | ")[6]


def test_test_py_miss_all_writes_one_dict_per_setting(synth_root, trained, monkeypatch, capsys):
    import test as test_script
    monkeypatch.setattr(sys, "argv", ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", trained,
                                      "TEST.WEIGHT", os.path.join(trained, "best.pth"), "TEST.MISS", "all",
                                      "LOG.PROGRESS_BARS", "no"])
    test_script.main()
    out = json.load(open(result_file(trained, "test_best_Synthetic_miss-all")))
    assert all(set(METRICS) <= set(out[s]) for s in (*MISS_SETTINGS, "average"))
    printed = capsys.readouterr()
    assert "| metric | Full | M (RGB)" in printed.out and "eval:" not in printed.err
    args = ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", trained, "LOG.PROGRESS_BARS", "no",
            "TEST.WEIGHT", os.path.join(trained, "best.pth")]
    monkeypatch.setattr(sys, "argv", args + ["TEST.MISS", "any"])
    test_script.main()
    out = json.load(open(result_file(trained, "test_best_Synthetic_miss-any")))
    assert set(out["table"]) == set(MISS_SETTINGS) and out["missing_rule"] == "missing modalities' inputs zero-filled"
    assert "query (rows) x gallery (columns)" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", args + ["TEST.MISS_QUERY", "r", "TEST.MISS_GALLERY", "none"])
    test_script.main()
    pair = json.load(open(result_file(trained, "test_best_Synthetic_miss-qr-gnone")))
    assert pair["mAP"] == out["table"]["r"]["none"]["mAP"] and pair["miss_query"] == "r"


def test_any_to_any_table_equals_single_query_gallery_runs(tiny_cfg, trained):
    """TEST.MISS any: one pass gives every query setting x gallery setting; each cell equals a separate
    TEST.MISS_QUERY / TEST.MISS_GALLERY run, and the diagonal equals TEST.MISS of that setting."""
    cfg = tiny_cfg()
    _, loader, nq, ncls, ncam = build_dataloaders(cfg)
    model = build_model(cfg, ncls, ncam, pretrained=False)
    model.load_state_dict(torch.load(os.path.join(trained, "best.pth"), weights_only=False)["model"])
    device = torch.device("cpu")
    results, _ = evaluate_any_to_any(cfg, model, loader, nq, device)
    assert list(results["table"]) == list(MISS_SETTINGS) and results["rule"] == "missing modalities' inputs zero-filled"
    for q, g in (("r", "t"), ("nt", "none"), ("none", "rn")):
        pair = tiny_cfg("TEST.MISS_QUERY", q, "TEST.MISS_GALLERY", g)
        single, _ = evaluate_model(pair, model, loader, nq, device)
        assert all(results["table"][q][g][k] == single[k] for k in METRICS), (q, g)
    same, _ = evaluate_model(cfg, model, loader, nq, device, miss="t")
    assert all(results["table"]["t"]["t"][k] == same[k] for k in METRICS)
    off = [results["table"][q][g]["mAP"] for q in MISS_SETTINGS[1:] for g in MISS_SETTINGS[1:]]
    assert results["average"]["mAP"] == pytest.approx(sum(off) / 36)
    lines = any_to_any_table(results).splitlines()
    assert "zero-filled" in lines[0] and lines[1].startswith("| query \\ gallery | Full | M (RGB)")
    assert f"{100 * results['table']['r']['t']['mAP']:.1f}" in lines[4].split(" | ")[4]


def test_a_present_only_model_is_told_which_modalities_are_missing():
    class PresentOnly(torch.nn.Module):
        missing_rule = "present"
        modalities = ("RGB", "NI", "TI")

        def forward(self, images, cam_label=None, missing=()):
            kept = [images[m].flatten(1).sum(1, keepdim=True) for m in self.modalities if m not in missing]
            return torch.cat(kept, 1)

    x = {m: torch.full((2, 3, 4, 4), float(i + 1)) for i, m in enumerate(("RGB", "NI", "TI"))}
    assert encode(PresentOnly(), x, None, "rt").tolist() == [[96.0], [96.0]]   # NI alone, not zeroed inputs
    assert encode(PresentOnly(), x, None, "").shape == (2, 3)
    with pytest.raises(ValueError, match="TEST.MISS must be one of"):
        encode(PresentOnly(), x, None, "q")


def test_query_gallery_settings_are_checked(tiny_cfg):
    with pytest.raises(ValueError, match="TEST.MISS 'r' and TEST.MISS_QUERY / TEST.MISS_GALLERY both choose"):
        tiny_cfg("TEST.MISS", "r", "TEST.MISS_QUERY", "t")
    with pytest.raises(ValueError, match=r"TEST.MISS_GALLERY must be one of \['', 'r', 'n', 't', 'rn', 'rt', 'nt'\]"):
        tiny_cfg("TEST.MISS_GALLERY", "all")
    assert tiny_cfg("TEST.MISS_QUERY", "none").TEST.MISS_QUERY == ""


def test_tensorboard_logs_every_term_lr_and_metric(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(trained, "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    terms = {"id_global", "tri_global", "id_sim", "tri_sim", "gam", "lam", "loss", "lr"}
    assert {f"iter/{t}" for t in terms} <= tags and {f"epoch/{t}" for t in terms} <= tags
    assert {f"eval/{k}" for k in METRICS} <= tags
    steps = [e.step for e in acc.Scalars("iter/loss")]
    records = [json.loads(line) for line in open(os.path.join(trained, "metrics.jsonl"))]
    ends = [sum(r["iterations"] for r in records[:i + 1]) for i in range(3)]
    assert steps == list(range(1, ends[-1] + 1))
    assert [e.step for e in acc.Scalars("eval/mAP")] == ends == [e.step for e in acc.Scalars("epoch/loss")]


def test_a_resumed_run_has_one_tensorboard_event_per_step(synth_root, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .test_end_to_end import opts, run_interrupted_at_epoch_2, run_train_inprocess
    out = str(tmp_path / "run")
    run_interrupted_at_epoch_2(opts(synth_root, out), monkeypatch)
    run_train_inprocess(["--resume"] + opts(synth_root, out), monkeypatch)
    acc = EventAccumulator(os.path.join(out, "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("iter/loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(acc.Scalars("eval/mAP")) == 2


def test_no_event_files_when_switched_off(synth_root, tmp_path, monkeypatch):
    from .test_end_to_end import opts, run_train_inprocess
    out = tmp_path / "run"
    run_train_inprocess(opts(synth_root, str(out), "SOLVER.MAX_EPOCHS", "1", "LOG.TENSORBOARD", "no"), monkeypatch)
    assert not (out / "tensorboard").exists()
