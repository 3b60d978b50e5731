"""The method registry: MODEL.METHOD chooses the model, its loss, LR rules and how its checkpoints are read."""
import os
import sys

import pytest
import torch

from config import load_config
from modeling import build_loss, build_model, load_eval_model, method_names
from modeling.weights import WeightsError, model_sizes

from .conftest import TINY, images
from .test_end_to_end import opts, run_train_inprocess

OFF = ["MODEL.USE_SIM", "no", "MODEL.USE_GAM", "no", "MODEL.USE_LAM", "no"]


def test_signal_and_baseline_are_registered_and_an_unknown_method_is_named(tiny_cfg):
    assert {"Signal", "Baseline"} <= set(method_names())
    with pytest.raises(ValueError, match=r"MODEL.METHOD 'Sgnal' is not a registered method; registered: .*Baseline"):
        tiny_cfg("MODEL.METHOD", "Sgnal")


@pytest.mark.parametrize("direct", [0, 1])
def test_baseline_is_signal_with_every_branch_off(tiny_cfg, direct):
    """Same seed, same weights: the Baseline computes what Signal computes with SIM, GAM and LAM off."""
    models = []
    for extra in (["MODEL.METHOD", "Baseline"], OFF):
        torch.manual_seed(0)
        models.append(build_model(tiny_cfg("MODEL.DIRECT", str(direct), *extra), num_classes=3, num_cameras=3))
    base, sig = models
    assert type(base).__name__ == "Baseline" and base.state_dict().keys() == sig.state_dict().keys()
    x, cams, target = images(6), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 1, 1, 2, 2])
    out = base(x, cam_label=cams)
    assert set(out) == {"heads"} and set(out["heads"]) == ({"global"} if direct else {"RGB", "NI", "TI"})
    terms = build_loss(tiny_cfg("MODEL.METHOD", "Baseline"))(out, target)
    ref = build_loss(tiny_cfg(*OFF))(sig(x, cam_label=cams), target)
    assert terms.keys() == ref.keys() and all(torch.allclose(terms[k], ref[k]) for k in terms)
    sum(terms.values()).backward()
    assert [n for n, p in base.named_parameters() if p.requires_grad and p.grad is None] == []
    base.eval(), sig.eval()
    with torch.no_grad():
        feat = base(x, cam_label=cams)
        assert feat.shape == (6, base.feat_dim) == (6, 48)
        assert torch.allclose(feat, sig(x, cam_label=cams))


def test_a_baseline_run_stores_its_method_and_sizes_and_test_reads_them(synth_root, tmp_path, monkeypatch):
    import test as test_script
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1", "MODEL.METHOD", "Baseline",
                             "MODEL.DIRECT", "0"), monkeypatch)
    for name in ("best.pth", "last.pth"):
        meta = torch.load(os.path.join(out, name), map_location="cpu", weights_only=False)["meta"]
        assert meta == {"method": "Baseline", "num_classes": 6, "num_cameras": 3,
                        "modalities": ["RGB", "NI", "TI"]}, name
    best = os.path.join(out, "best.pth")
    cfg = load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root, "MODEL.METHOD", "Baseline", "MODEL.DIRECT", "0"])
    model, cams = load_eval_model(cfg, best)
    assert type(model).__name__ == "Baseline" and cams == 3
    # the stored sizes win over the keys: a classifier renamed away does not matter
    state = torch.load(best, map_location="cpu", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if "classifiers" not in k}
    assert model_sizes(state, best) == (6, 3)
    signal_cfg = load_config("", TINY + ["DATASETS.ROOT_DIR", synth_root])
    with pytest.raises(WeightsError, match=r"trained with MODEL.DIRECT 0, MODEL.METHOD 'Baseline'"):
        load_eval_model(signal_cfg, best)
    no_config = str(tmp_path / "no_config.pth")  # without its config, the stored method still tells
    torch.save({k: v for k, v in state.items() if k != "config"}, no_config)
    with pytest.raises(WeightsError, match=r"checkpoint of the method 'Baseline', but MODEL.METHOD is 'Signal'"):
        load_eval_model(signal_cfg, no_config)
    monkeypatch.setattr(sys, "argv", ["test.py", *TINY, "DATASETS.ROOT_DIR", synth_root, "OUTPUT_DIR", out,
                                      "MODEL.METHOD", "Baseline", "MODEL.DIRECT", "0", "TEST.WEIGHT", best])
    test_script.main()


def test_a_plain_state_dict_is_sized_by_the_method_it_fits(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg("MODEL.METHOD", "Baseline"), num_classes=5, num_cameras=4)
    state = model.state_dict()
    assert model_sizes(state, "x.pth") == (5, 4)  # recognised by Signal's keys: same layout
    assert model_sizes(state, "x.pth", "Baseline") == (5, 4)
    with pytest.raises(WeightsError, match="not a model checkpoint of a registered method"):
        model_sizes({"visual.proj": torch.zeros(1)}, "clip.pth")
