"""Modalities come from the dataset: the missing-modality settings, the config checks, the model and the
worked example of docs/data.md (RGB + TI data on disk, no NI folder: trained, evaluated, refused on data that
lacks one of its modalities)."""
import json
import os
import shutil
import sys

import pytest
import torch

from config import load_config
from layers.gram import gram_volume
from modeling import WeightsError, build_loss, build_model
from utils.modalities import check_modalities, miss_choices, miss_label, miss_settings

from .conftest import TINY
from .helpers import result_file


def test_missing_settings_follow_the_modalities():
    assert miss_settings() == {"r": ("RGB",), "n": ("NI",), "t": ("TI",), "rn": ("RGB", "NI"),
                               "rt": ("RGB", "TI"), "nt": ("NI", "TI")}
    assert miss_choices(("RGB", "TI")) == ("", "r", "t", "all", "any")
    assert miss_label("rn") == "M (RGB+NIR)" and miss_label("t", ("RGB", "TI")) == "M (TIR)"
    with pytest.raises(ValueError, match="the modalities \\['NI', 'NIR2'\\] start with the same letter"):
        check_modalities(["RGB", "NI", "NIR2"], "DATASETS.CUSTOM.MODALITIES")
    with pytest.raises(ValueError, match="names a modality twice"):
        check_modalities(["RGB", "RGB"], "DATASETS.CUSTOM.MODALITIES")


def test_gram_volume_of_two_and_four_vectors():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.randn(n, 5, generator=g, dtype=torch.float64) for n in (3, 4, 4, 4))
    area = ((a * a).sum(1)[:, None] * (b * b).sum(1)[None] - (a @ b.T) ** 2).sqrt()
    torch.testing.assert_close(gram_volume(a, b).double(), area, rtol=1e-5, atol=1e-6)
    gram = torch.stack([torch.stack([x @ y for y in (a[1], b[2], c[2], d[2])]) for x in (a[1], b[2], c[2], d[2])])
    assert gram_volume(a, b, c, d)[1, 2].item() == pytest.approx(gram.det().abs().sqrt().item(), rel=1e-4)
    # three vectors: the closed form and the official einsum / det path agree
    torch.testing.assert_close(gram_volume(a, b, c), gram_volume(a, b, c, official_precision=True), rtol=1e-4,
                               atol=1e-6)


def _custom(root, *extra):
    return (TINY[:TINY.index("DATASETS.NAMES")] + TINY[TINY.index("DATASETS.NAMES") + 2:]
            + ["DATASETS.NAMES", "Custom", "DATASETS.ROOT_DIR", root, "DATASETS.CUSTOM.FOLDER", "RGBNT201",
               "DATASETS.CUSTOM.TRAIN", "train_171", "DATASETS.CUSTOM.QUERY", "test", "DATASETS.CUSTOM.GALLERY", "test",
               "DATASETS.CUSTOM.MODALITIES", "['RGB', 'TI']", "DATASETS.CUSTOM.MODALITY_FOLDERS", "['RGB', 'TI']",
               "DATASETS.CUSTOM.PATTERN", r"^(?P<id>\d{6})_cam(?P<camera>\d+)"] + list(extra))


def test_config_checks_read_the_datasets_modalities(tmp_path):
    root = str(tmp_path)
    assert load_config("", _custom(root, "TEST.MISS", "all")).TEST.MISS == "all"
    with pytest.raises(ValueError, match=r"TEST.MISS must be one of \['', 'r', 't', 'all', 'any'\] for the modalities "
                                         r"RGB, TI of Custom"):
        load_config("", _custom(root, "TEST.MISS", "n"))
    with pytest.raises(ValueError, match=r"MODALITY_FOLDERS must name 2 folders, one for each of "
                                         r"DATASETS.CUSTOM.MODALITIES \['RGB', 'TI'\]"):
        load_config("", _custom(root, "DATASETS.CUSTOM.MODALITY_FOLDERS", "['RGB', 'NI', 'TI']"))
    with pytest.raises(ValueError, match=r"TILE_ORDER must order the modalities \['RGB', 'TI'\]"):
        load_config("", _custom(root, "DATASETS.CUSTOM.TILED", "yes"))
    one = ["DATASETS.CUSTOM.MODALITIES", "['RGB']", "DATASETS.CUSTOM.MODALITY_FOLDERS", "['RGB']"]
    with pytest.raises(ValueError, match="MODEL.METHOD Signal needs at least 2 modalities; Custom has 1 \\(RGB\\)"):
        load_config("", _custom(root, *one))
    assert load_config("", _custom(root, *one, "MODEL.METHOD", "Baseline")).DATASETS.CUSTOM.MODALITIES == ["RGB"]
    with pytest.raises(ValueError, match=r"DATASETS.SYNTHETIC.MODALITIES must name one or more of \['RGB', 'NI', "
                                         r"'TI'\]"):
        load_config("", TINY + ["DATASETS.SYNTHETIC.MODALITIES", "['RGB', 'XX']"])


def test_signal_for_two_modalities_trains_every_part(tiny_cfg):
    cfg = tiny_cfg()
    model = build_model(cfg, 5, 3, pretrained=False, modalities=("RGB", "TI"))
    assert list(model.lam.samplers) == ["RGB", "TI"] and model.feat_dim == 4 * 16  # class tokens + SIM, 2 x 16
    g = torch.Generator().manual_seed(0)
    images = {m: torch.randn(4, 3, 64, 32, generator=g) for m in ("RGB", "TI")}
    out = model(images, cam_label=torch.tensor([0, 1, 2, 0]))
    terms = build_loss(cfg)(out, torch.tensor([0, 0, 1, 1]))
    assert {"id_global", "tri_global", "id_sim", "tri_sim", "gam", "lam"} <= set(terms)
    sum(terms.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused  # every trainable tensor is used (DDP would stop on an unused one)
    model.eval()
    assert model(images, cam_label=torch.tensor([0, 1, 2, 0])).shape == (4, model.feat_dim)


@pytest.fixture(scope="module")
def rgb_ti_root(tmp_path_factory):
    """A synthetic benchmark in the RGBNT201 layout with its NI folders removed: RGB and TI on disk only."""
    from data.datasets import write_synthetic
    root = str(tmp_path_factory.mktemp("rgbt"))
    write_synthetic(root, "RGBNT201", num_train_ids=6, num_test_ids=4, images_per_id=4, size=(64, 32))
    for split in ("train_171", "test"):
        shutil.rmtree(os.path.join(root, "RGBNT201", split, "NI"))
    return root


def test_rgb_ti_worked_example_trains_and_evaluates(rgb_ti_root, synth_root, tmp_path, monkeypatch):
    import test as test_cli
    import train
    out = str(tmp_path / "run")
    run = _custom(rgb_ti_root, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_ITERS", "1",
                  "SOLVER.EVAL_PERIOD", "1")
    monkeypatch.setattr(sys, "argv", ["train.py"] + run)
    train.main()
    best = os.path.join(out, "best.pth")
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["meta"]["modalities"] == ["RGB", "TI"]
    assert not any(".NI." in k or k.endswith(".NI") for k in ckpt["model"])
    record = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
    assert {"gam", "lam", "id_sim", "mAP"} <= set(record)
    monkeypatch.setattr(sys, "argv", ["test.py"] + run + ["TEST.WEIGHT", best, "TEST.MISS", "all"])
    test_cli.main()
    result = json.load(open(result_file(out, "test_best_Custom_miss-all")))
    assert {"none", "r", "t", "average"} <= set(result) and "n" not in result
    assert result["average"]["mAP"] == pytest.approx((result["r"]["mAP"] + result["t"]["mAP"]) / 2)
    # data without TI: the checkpoint is refused by name before any feature is computed
    monkeypatch.setattr(sys, "argv", ["test.py"] + TINY + ["DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out,
                                                           "DATASETS.SYNTHETIC.MODALITIES", "['RGB', 'NI']",
                                                           "TEST.WEIGHT", best])
    with pytest.raises(WeightsError, match=r"trained on the modalities RGB, TI; the data \(Synthetic\) has RGB, "
                                           r"NI: the model needs TI too"):
        test_cli.main()
