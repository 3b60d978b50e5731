"""Inputs that used to be dropped, ignored or reported deep inside a library: each is refused or named."""
import os

import pytest

from config import load_config

from .conftest import ROOT, TINY


def test_a_section_given_twice_in_a_yaml_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "twice.yml"
    path.write_text("SOLVER:\n  BASE_LR: 0.1\nMODEL:\n  TOPK: 4\nSOLVER:\n  MAX_EPOCHS: 3\n")
    with pytest.raises(ValueError, match=r"twice.yml: 'SOLVER' is given twice in one section \(lines 1 and 5\)"):
        load_config(str(path))
    path.write_text("SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n")
    with pytest.raises(ValueError, match="'BASE_LR' is given twice"):
        load_config(str(path))


def test_a_config_that_is_not_utf8_names_its_file(tmp_path):
    path = tmp_path / "latin1.yml"
    path.write_bytes("OUTPUT_DIR: ./sortie_\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.yml: not a UTF-8 text file"):
        load_config(str(path))


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda:x", "CUDA"])
def test_device_names_are_checked_with_the_config(device):
    with pytest.raises(ValueError, match=f"MODEL.DEVICE must be auto, cpu, cuda or cuda:N.*{device!r}"):
        load_config("", TINY + ["MODEL.DEVICE", device])
    assert load_config("", TINY + ["MODEL.DEVICE", "cuda:1"]).MODEL.DEVICE == "cuda:1"


def test_home_in_paths_is_expanded(tmp_path):
    cfg = load_config("", TINY + ["OUTPUT_DIR", "~/runs/x", "MODEL.PRETRAIN_PATH", "~/w.pth"])
    assert cfg.OUTPUT_DIR == os.path.expanduser("~/runs/x") and not cfg.OUTPUT_DIR.startswith("~")
    assert cfg.MODEL.PRETRAIN_PATH == os.path.expanduser("~/w.pth")


def test_weights_path_that_is_a_folder_says_so(tmp_path):
    from modeling import WeightsError, read_checkpoint
    with pytest.raises(WeightsError, match="is a folder"):
        read_checkpoint(str(tmp_path))


def test_overwrite_deletes_the_old_runs_test_results_but_not_other_models(tiny_cfg, tmp_path):
    from engine.rundir import prepare_run_folder
    out = tmp_path / "run"
    out.mkdir()
    mine = ["test_best_Synthetic_0123abcd.json", "test_last_Synthetic_miss-r_0123abcd.json",
            "test_Signal_10_Synthetic_0123abcd.json"]
    other = "test_run1-best_Synthetic_0123abcd.json"
    for f in ["metrics.jsonl", "last.pth", *mine, other]:
        (out / f).write_text("{}")
    run = prepare_run_folder(tiny_cfg("OUTPUT_DIR", str(out)), overwrite=True)
    run.release()
    assert set(mine) <= set(run.removed) and sorted(os.listdir(out)) == [".lock", other]


@pytest.mark.parametrize("argv, program, message", [
    (["--save-features", "f.npz"], "train.py", "unrecognized arguments: --save-features"),
    (["--resume"], "test.py", "unrecognized arguments: --resume"),
    (["--overwrite", "--allow-change", "X"], "test.py", "unrecognized arguments: --overwrite --allow-change"),
    (["--allow-change", "SOLVER.MAX_EPOCHS"], "train.py", "--allow-change only applies with --resume"),
])
def test_flags_of_the_other_program_are_refused(argv, program, message, capsys):
    """train.py and test.py parse their own flags: one of the other program's is an error naming it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("entry_" + program[:-3], os.path.join(ROOT, program))
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    with pytest.raises(SystemExit) as e:
        entry.parse_args(["--config_file", "x.yml", *argv, "SOLVER.SEED", "1"])
    assert e.value.code == 2 and message in capsys.readouterr().err
    args = entry.parse_args(["--config_file", "x.yml", "SOLVER.SEED", "1"] + (
        ["--resume", "--allow-change", "A"] if program == "train.py" else ["--save-features"]))
    assert args.opts == ["SOLVER.SEED", "1"]


def test_one_validation_identity_is_refused_and_one_test_identity_warned(tiny_cfg, caplog):
    from data import build_dataset, build_test_loader, split_validation
    dataset = build_dataset(tiny_cfg())
    with pytest.raises(ValueError, match="VAL_IDS=1.0 holds out 1 of 6.*between 2"):
        split_validation(dataset.train, 1.0, 0)
    one = [s for s in dataset.query if s.pid == dataset.query[0].pid]
    build_test_loader(tiny_cfg(), one, one, True, dataset.tiled)
    assert "queries hold one identity" in caplog.text


def test_a_checkpoint_evaluated_with_other_model_keys_is_one_line(tiny_cfg, tmp_path):
    """Every checkpoint stores its config; evaluating it as another model (MODEL.TOPK 4 on a TOPK-2 checkpoint:
    silently another model; another backbone: a wall of key mismatches) is one line naming the keys."""
    import torch

    from modeling import WeightsError, build_model, load_eval_model
    cfg = tiny_cfg("MODEL.TOPK", "2")
    path = tmp_path / "best.pth"
    torch.save({"model": build_model(cfg, 6, 3).state_dict(), "config": cfg.dump()}, path)
    load_eval_model(cfg, str(path))
    with pytest.raises(WeightsError, match=r"trained with MODEL.SIGNAL.TOPK 2; the config asks for 4: evaluate it with "
                                           r"the config of its run"):
        load_eval_model(tiny_cfg("MODEL.TOPK", "4"), str(path))
    with pytest.raises(WeightsError) as e:
        load_eval_model(tiny_cfg("MODEL.TOPK", "2", "MODEL.CUSTOM_VIT.DEPTH", "3", "MODEL.USE_LAM", "no"), str(path))
    assert len(str(e.value).splitlines()) == 1
    assert "MODEL.CUSTOM_VIT.DEPTH 2" in str(e.value) and "MODEL.SIGNAL.USE_LAM True" in str(e.value)


def test_a_mid_epoch_resume_may_move_the_data_folder_but_not_change_the_batches():
    from config import get_cfg
    from engine.rundir import RunFolderError, check_mid_epoch_changes
    cfg = get_cfg()
    state = {"partial": {"epoch": 2, "iterations": 1}}
    check_mid_epoch_changes(state, [("DATASETS.ROOT_DIR", "/old", "/new"), ("MODEL.DEVICE", "cpu", "cuda")], cfg)
    with pytest.raises(RunFolderError, match=r"DATASETS.NAMES, SOLVER.SEED changed, which changes that epoch's"):
        check_mid_epoch_changes(state, [("DATASETS.ROOT_DIR", "/old", "/new"), ("DATASETS.NAMES", "A", "B"),
                                        ("SOLVER.SEED", 1, 2)], cfg)
    check_mid_epoch_changes({"partial": None}, [("SOLVER.SEED", 1, 2)], cfg)  # at an epoch boundary: any order
