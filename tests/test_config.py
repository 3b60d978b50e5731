import glob
import os

import pytest
import torch

from config import get_cfg, load_config
from modeling import build_model

from .conftest import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"), recursive=True))


def test_configs_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in CONFIGS}
    for required in ("RGBNT201/Signal.yml", "RGBNT201/baseline.yml", "RGBNT201/SIM.yml", "RGBNT201/SIM_GAM.yml",
                     "RGBNT100/Signal.yml", "MSVR310/Signal.yml", "WMVeID863/Signal.yml", "Market1501-MM/Signal.yml",
                     "Synthetic/demo.yml"):
        assert required in names
    for bench in ("RGBNT201", "RGBNT100", "MSVR310"):  # starting recipes for other backbones
        assert {f"{bench}/Signal_{b}.yml" for b in ("dinov3", "dinov2", "eva02")} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_merges_and_builds(path):
    cfg = load_config(path, ["MODEL.PRETRAIN_PATH", ""])
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = build_model(cfg, num_classes=5, num_cameras=4)
    h, w = cfg.INPUT.SIZE_TRAIN
    p = model.backbone.vit.patch_embed.patch_size[0]
    assert model.backbone.grid == (h // p, w // p)
    assert type(model).__name__ == cfg.MODEL.METHOD
    if cfg.MODEL.METHOD == "Signal":
        assert (model.sim is not None) == cfg.MODEL.USE_SIM
        assert (model.gam is not None) == cfg.MODEL.USE_GAM
        assert (model.lam is not None) == cfg.MODEL.USE_LAM


def test_ablation_configs_differ_only_in_module_switches():
    cfgs = {n: load_config(os.path.join(ROOT, "configs/RGBNT201", n + ".yml"))
            for n in ("baseline", "SIM", "SIM_GAM", "Signal")}
    flags = {n: (c.MODEL.USE_SIM, c.MODEL.USE_GAM, c.MODEL.USE_LAM) for n, c in cfgs.items()}
    assert flags == {"baseline": (False, False, False), "SIM": (True, False, False),
                     "SIM_GAM": (True, True, False), "Signal": (True, True, True)}
    a, b = cfgs["baseline"].clone(), cfgs["Signal"].clone()
    for c in (a, b):
        c.defrost()
        c.MODEL.USE_SIM = c.MODEL.USE_GAM = c.MODEL.USE_LAM = True
        c.OUTPUT_DIR = ""
    assert a.dump() == b.dump()


def test_yes_no_and_overrides():
    cfg = load_config("", ["TEST.RE_RANKING", "yes", "TEST.MISS", "rn", "SOLVER.BASE_LR", "1e-3",
                           "INPUT.SIZE_TRAIN", "[128,256]", "INPUT.SIZE_TEST", "[128,256]"])
    assert cfg.TEST.RE_RANKING is True and cfg.TEST.MISS == "rn"
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-3) and cfg.INPUT.SIZE_TRAIN == [128, 256]
    assert load_config("", ["TEST.MISS", "nothing"]).TEST.MISS == ""


@pytest.mark.parametrize("opts,match", [
    (["MODEL.NOT_A_KEY", "1"], "unknown config key 'MODEL.NOT_A_KEY'"),
    (["TEST.RE_RANKING", "maybe"], "TEST.RE_RANKING expects yes/no"),
    (["TEST.MISS", "x"], "TEST.MISS must be one of"),
    (["SOLVER.BASE_LR", "fast"], "SOLVER.BASE_LR expects a float"),
    (["MODEL.LAM_OFFSET_CHANNELS", "3"], "LAM_OFFSET_CHANNELS"),
    (["SOLVER.IMS_PER_BATCH", "30", "DATALOADER.NUM_INSTANCE", "4"], "multiple of"),
])
def test_bad_values_are_clear_errors(opts, match):
    with pytest.raises((KeyError, ValueError), match=match):
        load_config("", opts)


def test_bad_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yml"
    p.write_text("MODEL:\n  TOPKK: 3\n")
    with pytest.raises(KeyError, match=str(p)):
        load_config(str(p))


def test_get_cfg_returns_fresh_clone():
    a = get_cfg()
    a.MODEL.TOPK = 1
    assert get_cfg().MODEL.TOPK == 80


def test_public_api_names():
    import inspect

    from data import build_dataloaders  # noqa: F401
    from layers import gram_volume  # noqa: F401
    from modeling import build_model, load_weights
    from utils.metrics import evaluate
    from utils.reranking import re_ranking
    assert list(inspect.signature(build_model).parameters)[:3] == ["cfg", "num_classes", "num_cameras"]
    assert list(inspect.signature(load_weights).parameters)[:2] == ["model", "path"]
    assert list(inspect.signature(evaluate).parameters) == ["distmat", "q_pids", "g_pids", "q_camids", "g_camids",
                                                            "q_sceneids", "g_sceneids", "max_rank"]
    assert list(inspect.signature(re_ranking).parameters)[:5] == ["q_feat", "g_feat", "k1", "k2", "lambda_value"]


def test_get_cfg_merges_like_the_command_line(tmp_path):
    """detectron2-style scripting: _BASE_ inheritance, yes/no booleans and the same checks."""
    path = os.path.join(ROOT, "configs", "RGBNT201", "Signal.yml")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.USE_LAM is True and cfg.MODEL.TOPK == 80 and cfg.DATASETS.NAMES == "RGBNT201"  # from base.yml
    cfg.merge_from_list(["TEST.RE_RANKING", "yes", "SOLVER.BASE_LR", "1e-3"])
    assert cfg.dump() == load_config(path, ["TEST.RE_RANKING", "yes", "SOLVER.BASE_LR", "1e-3"]).dump()
    with pytest.raises(KeyError, match="unknown config key 'MODEL.NOPE'"):
        cfg.merge_from_list(["MODEL.NOPE", "1"])
    with pytest.raises(ValueError, match="TEST.RE_RANKING expects yes/no"):
        cfg.merge_from_list(["TEST.RE_RANKING", "maybe"])
    cfg.merge_from_list(["MODEL.TOPK", "0"])  # checked with the whole config, when it is frozen
    with pytest.raises(ValueError, match=r"MODEL.SIGNAL.TOPK \(MODEL.TOPK\) must be an integer >= 1"):
        cfg.freeze()
    assert not cfg.is_frozen()
    cfg.merge_from_list(["MODEL.TOPK", "80"])
    bad = tmp_path / "bad.yml"
    bad.write_text("SOLVER:\n  BASE_LRR: 1.0\n")
    with pytest.raises(KeyError, match=str(bad)):
        cfg.merge_from_file(str(bad))
    cfg.freeze()
    with pytest.raises(AttributeError, match="defrost"):
        cfg.merge_from_list(["MODEL.TOPK", "3"])
    assert type(cfg.clone()) is type(cfg)


def test_keys_that_depend_on_each_other_may_change_in_separate_merges():
    """The checks between keys run on the complete config (at freeze), not after each merge."""
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "12"])  # not a multiple of the default NUM_INSTANCE 8 ...
    cfg.merge_from_list(["DATALOADER.NUM_INSTANCE", "3"])  # ... until this merge
    cfg.freeze()
    assert cfg.SOLVER.IMS_PER_BATCH == 12 and cfg.DATALOADER.NUM_INSTANCE == 3
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", "12"])
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(12\) must be a multiple of DATALOADER.NUM_INSTANCE"):
        cfg.freeze()
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(12\) must be a multiple"):
        load_config("", ["SOLVER.IMS_PER_BATCH", "12"])


def test_official_recipe_defaults():
    cfg = get_cfg()
    assert cfg.SOLVER.AMP == "fp16" and cfg.SOLVER.LR_NOISE_RANGE == [0.0, 1.0]
    msvr = load_config(os.path.join(ROOT, "configs", "MSVR310", "Signal.yml"))
    assert msvr.SOLVER.SCHEDULER == "multistep" and msvr.SOLVER.STEPS == [20, 40]


@pytest.mark.parametrize("opts,match", [
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be an integer >= 1"),
    (["SOLVER.IMS_PER_BATCH", "-8"], "SOLVER.IMS_PER_BATCH must be an integer >= 1"),
    (["DATALOADER.NUM_INSTANCE", "0"], "DATALOADER.NUM_INSTANCE must be an integer >= 1"),
    (["SOLVER.LOG_PERIOD", "0"], "SOLVER.LOG_PERIOD must be an integer >= 1"),
    (["SOLVER.EVAL_PERIOD", "-1"], "SOLVER.EVAL_PERIOD must be an integer >= 0"),
    (["SOLVER.MAX_EPOCHS", "0"], "SOLVER.MAX_EPOCHS must be an integer >= 1"),
    (["DATALOADER.NUM_WORKERS", "-2"], "DATALOADER.NUM_WORKERS must be an integer >= 0"),
    (["SOLVER.BASE_LR", "-1e-3"], "SOLVER.BASE_LR must be a learning rate >= 0"),
    (["SOLVER.SEED", "-1"], "SOLVER.SEED must be an integer in"),
    (["INPUT.PROB", "1.5"], "INPUT.PROB must be a probability in"),
    (["INPUT.RE_PROB", "-0.1"], "INPUT.RE_PROB must be a probability in"),
    (["INPUT.PIXEL_STD", "[0.5,0.0,0.5]"], "INPUT.PIXEL_STD must be > 0"),
    (["INPUT.PIXEL_MEAN", "[0.5,0.5]"], "INPUT.PIXEL_MEAN must hold 3 numbers"),
    (["TEST.RE_RANKING_K1", "0"], "TEST.RE_RANKING_K1 must be an integer >= 1"),
    (["TEST.RE_RANKING_K2", "-1"], "TEST.RE_RANKING_K2 must be an integer >= 1"),
    (["TEST.RE_RANKING_LAMBDA", "1.2"], "TEST.RE_RANKING_LAMBDA must be a weight in"),
    (["INPUT.SIZE_TEST", "[384,128]"], "INPUT.SIZE_TEST \\[384, 128\\] differs from INPUT.SIZE_TRAIN"),
    (["INPUT.SIZE_TRAIN", "[250,128]", "INPUT.SIZE_TEST", "[250,128]"], "not a multiple of the backbone's patch"),
    (["SOLVER.LR_NOISE_RANGE", "[0.5,0.2]"], "SOLVER.LR_NOISE_RANGE"),
    (["SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "8"], "fewer than 2 identities"),
])
def test_values_that_would_fail_later_are_refused_at_start_up(opts, match):
    with pytest.raises(ValueError, match=match):
        load_config("", opts)


def test_eval_period_zero_means_the_last_epoch_only():
    assert load_config("", ["SOLVER.EVAL_PERIOD", "0"]).SOLVER.EVAL_PERIOD == 0


def test_base_inheritance_loops_and_lists(tmp_path):
    (tmp_path / "a.yml").write_text("_BASE_: b.yml\nMODEL:\n  TOPK: 5\n")
    (tmp_path / "b.yml").write_text("_BASE_: a.yml\n")
    with pytest.raises(ValueError, match="_BASE_ inheritance loops: .*a.yml -> .*b.yml -> .*a.yml"):
        load_config(str(tmp_path / "a.yml"))
    (tmp_path / "c.yml").write_text("MODEL:\n  TOPK: 7\n  SIM_HEADS: 4\n")
    (tmp_path / "d.yml").write_text("MODEL:\n  TOPK: 9\n")
    (tmp_path / "e.yml").write_text("_BASE_: [c.yml, d.yml]\nSOLVER:\n  MAX_EPOCHS: 3\n")
    cfg = load_config(str(tmp_path / "e.yml"))
    assert (cfg.MODEL.TOPK, cfg.MODEL.SIM_HEADS, cfg.SOLVER.MAX_EPOCHS) == (9, 4, 3)
    (tmp_path / "f.yml").write_text("_BASE_: {x: 1}\n")
    with pytest.raises(ValueError, match="_BASE_ must be a file path or a list"):
        load_config(str(tmp_path / "f.yml"))
    (tmp_path / "g.yml").write_text("_BASE_: missing.yml\n")
    with pytest.raises(FileNotFoundError, match="the _BASE_ of .*g.yml"):
        load_config(str(tmp_path / "g.yml"))


def test_every_config_key_is_declared_once_with_a_role():
    """config/defaults.py and the methods declare every key with its default and role (utils/keyfacts.py); a
    key of the tree without a declaration, a declaration outside the tree or a key declared without a role
    fails here."""
    from dataclasses import replace

    from config.setup import flatten
    from utils.keyfacts import ROLES, Facts, KeyTable, key_table
    cfg = get_cfg()
    table = key_table(cfg)
    assert set(flatten(cfg)) == set(table.keys)
    roles = set(ROLES.values())
    for name, k in table.keys.items():
        bare = replace(k.facts, path=False, choices=None, low=None, high=None, what="")
        if name in ("DATASETS.ROOT_DIR",):  # a free key that names the data: part of the result name
            bare = replace(bare, evaluated=False)
        if name in ("DATALOADER.NUM_INSTANCE", "SOLVER.SEED", "SOLVER.IMS_PER_BATCH"):  # training keys of the batches
            bare = replace(bare, batch_order=False)
        assert bare in roles, f"{name}: {k.facts} is not one of the roles of utils/keyfacts.py"
        assert k.default == flatten(cfg)[name]
    for spec_name, owner in (("MODEL.SIGNAL.TOPK", "Signal"),):
        assert table.owner[spec_name] == owner
    with pytest.raises(TypeError, match="config key MODEL.NEW: its facts must be a role"):
        KeyTable().add("MODEL.NEW", 1, None)
    t = KeyTable()
    t.add("MODEL.A", 1, Facts())
    with pytest.raises(ValueError, match="MODEL.A is declared twice"):
        t.add("MODEL.A", 2, Facts())


def test_aliases_read_write_and_name_the_same_key(tmp_path):
    """Signal's keys live in MODEL.SIGNAL; the official flat names (MODEL.TOPK) read and write them in YAML,
    on the command line and as attributes; giving both in one file is an error naming both."""
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.TOPK", "7", "MODEL.SIGNAL.SIM_HEADS", "2"])
    assert cfg.MODEL.SIGNAL.TOPK == 7 == cfg.MODEL.TOPK and cfg.MODEL.SIM_HEADS == 2
    cfg.MODEL.USE_LAM = False
    assert cfg.MODEL.SIGNAL.USE_LAM is False and "USE_LAM" not in cfg.MODEL and "TOPK:" not in cfg.dump().split("SIGNAL:")[0]
    (tmp_path / "a.yml").write_text("MODEL:\n  TOPK: 9\n  SIGNAL:\n    TOPK: 10\n")
    with pytest.raises(ValueError, match=r"a.yml: MODEL.TOPK and MODEL.SIGNAL.TOPK are the same key"):
        load_config(str(tmp_path / "a.yml"))
    (tmp_path / "b.yml").write_text("MODEL:\n  TOPK: 9\n")
    assert load_config(str(tmp_path / "b.yml")).MODEL.SIGNAL.TOPK == 9


def test_the_facts_drive_resume_result_names_and_evaluation_checks(tmp_path):
    """A stored config with the flat names (older checkpoints) is compared through the aliases; a method's keys
    count only under that method; training-only keys leave the result name alone."""
    import yaml

    from engine.rundir import RunFolderError, check_resume_config, free_keys, shape_keys
    from test import evaluation_hash
    cfg = load_config(opts=["MODEL.TRANSFORMER_TYPE", "vit_custom"])
    old = yaml.safe_load(cfg.dump())
    old["MODEL"].update({k: old["MODEL"]["SIGNAL"][k] for k in ("TOPK", "USE_SIM")})
    del old["MODEL"]["SIGNAL"]
    old["MODEL"]["TOPK"] = 5
    old["MODEL"]["USE_SIM"] = False
    with pytest.raises(RunFolderError, match=r"MODEL.SIGNAL.USE_SIM \(MODEL.USE_SIM\) changed"):
        check_resume_config(yaml.safe_dump(old), cfg, [], "last.pth")
    old["MODEL"]["USE_SIM"] = True
    with pytest.raises(RunFolderError, match=r"MODEL.SIGNAL.TOPK: checkpoint 5, now 80"):
        check_resume_config(yaml.safe_dump(old), cfg, [], "last.pth")
    assert check_resume_config(yaml.safe_dump(old), cfg, ["MODEL.TOPK"], "last.pth") == [("MODEL.SIGNAL.TOPK", 5, 80)]
    assert {"OUTPUT_DIR", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS"} <= free_keys(cfg)
    assert "MODEL.SIGNAL.USE_SIM" in shape_keys(cfg) and "SOLVER.BASE_LR" not in shape_keys(cfg) | free_keys(cfg)
    base = evaluation_hash(cfg)
    for key, value, same in (("SOLVER.BASE_LR", "1e-3", True), ("MODEL.SIGNAL.GAM_WEIGHT", "0.5", True),
                             ("MODEL.DEVICE", "cpu", True), ("MODEL.TOPK", "4", False), ("TEST.RE_RANKING", "yes", False),
                             ("DATASETS.ROOT_DIR", str(tmp_path), False)):
        other = load_config(opts=["MODEL.TRANSFORMER_TYPE", "vit_custom", key, value])
        assert (evaluation_hash(other) == base) == same, key
    baseline = load_config(opts=["MODEL.TRANSFORMER_TYPE", "vit_custom", "MODEL.METHOD", "Baseline"])
    other = load_config(opts=["MODEL.TRANSFORMER_TYPE", "vit_custom", "MODEL.METHOD", "Baseline", "MODEL.TOPK", "4"])
    assert evaluation_hash(baseline) == evaluation_hash(other)  # Signal's keys change nothing under Baseline
    assert "MODEL.SIGNAL.USE_SIM" in free_keys(baseline) and "MODEL.SIGNAL.USE_SIM" not in shape_keys(baseline)
