"""docs/extending.md's worked examples, applied to a copy of the repository exactly as written there: each
touches at most two files plus YAML, and the copy then trains and evaluates with them."""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT
from .helpers import newest_stack_only, python_commands

DOC = os.path.join(ROOT, "docs", "extending.md")
_FILE_BLOCK = re.compile(r"File `([^`]+)` \((new|append)\):\n\n```\w+\n(.*?)```", re.S)


def doc_section(title):
    text = open(DOC).read()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(section, lang):
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def repository_copy(dest):
    """The repository's files (tracked, and untracked ones git does not ignore) copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src) and not rel.startswith(("docs/", "output")):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def apply_file_blocks(section, repo):
    """Write the section's file blocks into ``repo``; returns the files touched."""
    touched = []
    for rel, how, text in _FILE_BLOCK.findall(section):
        path = os.path.join(repo, rel)
        assert (how == "new") != os.path.exists(path), f"{rel} is marked {how} in docs/extending.md"
        os.makedirs(os.path.dirname(path), exist_ok=True)  # a new method is a new folder
        with open(path, "a" if how == "append" else "w") as f:
            f.write(("\n" if how == "append" else "") + text)
        touched.append(rel)
    return touched


def run(repo, *commands):
    """Each command (``[script, args...]`` or ``["-c", code]``, as ``python`` would take it) with its expected
    exit code, ``(command, code)``, in the copy ``repo`` (which alone is on the path), in one interpreter.
    Returns (the commands' stderr texts, the interpreter's stdout)."""
    return python_commands(*commands, cwd=repo, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def doc_config(section, tmp_path, root):
    """The section's YAML with its data folder ``root`` and its run folder under ``tmp_path``."""
    (text,) = blocks(section, "yaml")
    cfg = yaml.safe_load(text)
    cfg["DATASETS"]["ROOT_DIR"], cfg["OUTPUT_DIR"] = str(root), str(tmp_path / "run")
    (tmp_path / "run.yml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "run.yml")


def run_log_and_records(tmp_path):
    return (open(tmp_path / "run" / "train_log.txt").read(),
            [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")])


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository_copy(str(tmp_path_factory.mktemp("repo")))


@newest_stack_only
def test_a_new_dataset_layout_is_one_module_and_one_import(repo, tmp_path):
    section = doc_section("A dataset layout")
    assert apply_file_blocks(section, repo) == ["data/datasets/mmveh.py", "data/datasets/__init__.py"]
    data = tmp_path / "mmveh"
    (command,) = blocks(section, "bash")
    write = re.search(r'python -c "(.*)"', command).group(1).replace("/tmp/mmveh", str(data))
    config = doc_config(section, tmp_path, data)
    # a missing sample file is reported by name; the registry lists the dataset for an unknown name
    remove = f"import os; os.remove({str(data / 'MMVeh' / 'query' / '0017_c1_00_tir.png')!r})"
    errors, _ = run(repo, (["-c", write], 0), (["train.py", "--config_file", config], 0), (["-c", remove], 0),
                    (["test.py", "--config_file", config, "TEST.WEIGHT", tmp_path / "run" / "best.pth"], 2),
                    (["train.py", "--config_file", config, "DATASETS.NAMES", "MMVeh2"], 2))
    assert sorted(os.listdir(data / "MMVeh")) == [".synthetic.json", "gallery", "query", "train"]
    assert "0001_c1_00_nir.png" in os.listdir(data / "MMVeh" / "train")
    log, records = run_log_and_records(tmp_path)
    assert 0 < records[-1]["mAP"] <= 1
    # 16 training identities, 16 queries (2 per test identity)
    assert re.search(r"train\s+\|\s+16 \|\s+128 \|", log) and re.search(r"query\s+\|\s+8 \|\s+16 \|", log)
    assert "0017_c1_00_rgb.png (no file of that name in: _tir)" in errors[3]
    assert "'MMVeh'" in errors[4] and "got 'MMVeh2'" in errors[4]


@newest_stack_only
def test_a_backbone_timm_does_not_build_is_one_module_and_one_import(repo, tmp_path):
    section = doc_section("A backbone that is not a timm ViT")
    assert apply_file_blocks(section, repo) == ["modeling/torch_vit.py", "modeling/__init__.py"]
    config = doc_config(section, tmp_path, tmp_path / "data")
    # the backbone's parameters train at the spec's LR rule (BASE_LR x BACKBONE_LR_FACTOR), the heads at BASE_LR
    probe = ("from config import load_config; from modeling import build_model; from solver import build_optimizer; "
             "cfg = load_config(%r); m = build_model(cfg, 4, 3); o = build_optimizer(cfg, m); "
             "ids = {id(p): n for n, p in m.named_parameters()}; part = lambda n: n.split('.')[n.startswith('backbone.')]; "
             "print('LRS', sorted({(part(ids[id(p)]), g['lr']) for g in o.param_groups for p in g['params'] "
             "if ids[id(p)].endswith('weight')}))" % config)
    import torch
    torch.save({"patch_embed.weight": torch.zeros(1)}, tmp_path / "w.pth")
    errors, out = run(repo, (["train.py", "--config_file", config], 0), (["-c", probe], 0),
                      (["train.py", "--config_file", config, "OUTPUT_DIR", tmp_path / "run2", "MODEL.PRETRAIN_PATH",
                        tmp_path / "w.pth"], 2))
    log, records = run_log_and_records(tmp_path)
    assert "Model: torch_vit_tiny" in log and "RANDOM weights" not in log  # small: no random-weights warning
    assert "mAP" in records[-1]
    lrs = dict(eval(out.split("LRS ", 1)[1].splitlines()[0]))
    assert lrs["vit"] == pytest.approx(3.5e-4 * 0.8) and lrs["sim"] == pytest.approx(3.5e-4)
    # no converter: MODEL.PRETRAIN_PATH is refused by name (exit code 2, one line)
    assert "the backbone torch_vit_tiny takes no pretrained checkpoint" in errors[2]


@newest_stack_only
def test_a_branch_is_one_module_and_its_config_keys(repo, tmp_path):
    section = doc_section("A branch like SIM, GAM or LAM")
    assert apply_file_blocks(section, repo) == ["modeling/methods/signal/branches/patch_mean.py"]
    config = doc_config(section, tmp_path, tmp_path / "data")
    best = tmp_path / "run" / "best.pth"
    errors, _ = run(repo, (["train.py", "--config_file", config], 0),
                    # evaluating the checkpoint with the branch off is refused by name, with it on it works
                    (["test.py", "--config_file", config, "TEST.WEIGHT", best, "MODEL.USE_PATCH_MEAN", "no"], 2),
                    (["test.py", "--config_file", config, "TEST.WEIGHT", best], 0),
                    # a resume cannot switch it off
                    (["train.py", "--config_file", config, "--resume", "--allow-change", "all",
                      "MODEL.USE_PATCH_MEAN", "no", "SOLVER.MAX_EPOCHS", "2"], 2))
    log, (record,) = run_log_and_records(tmp_path)
    assert "test feature 576-d" in log
    assert {"id_patch_mean", "tri_patch_mean", "patch_mean", "id_sim", "gam", "lam", "mAP"} <= set(record)
    assert record["patch_mean"] > 0
    assert "MODEL.SIGNAL.USE_PATCH_MEAN True" in errors[1]
    assert "MODEL.USE_PATCH_MEAN" in errors[3] and "cannot continue" in errors[3]


@newest_stack_only
def test_a_method_is_one_folder_and_one_yaml(repo, tmp_path):
    section = doc_section("A new method")
    assert apply_file_blocks(section, repo) == ["modeling/methods/token_mean/__init__.py"]
    config = doc_config(section, tmp_path, tmp_path / "data")
    best = tmp_path / "run" / "best.pth"
    errors, out = run(repo, (["train.py", "--config_file", config], 0),
                      (["test.py", "--config_file", config, "TEST.WEIGHT", best], 0),
                      # evaluated as another method: refused by name
                      (["test.py", "--config_file", config, "TEST.WEIGHT", best, "MODEL.METHOD", "Baseline"], 2),
                      (["-c", f"import torch; print('META', torch.load({str(best)!r}, weights_only=False)['meta'])"], 0),
                      # its own config key: evaluated with another value than trained, refused naming it
                      (["test.py", "--config_file", config, "TEST.WEIGHT", best, "MODEL.TOKENMEAN.MEAN_ONLY", "yes"], 2))
    log, (record,) = run_log_and_records(tmp_path)
    assert "test feature 384-d" in log
    assert {"id_token_mean", "tri_token_mean", "mAP"} <= set(record)
    assert "MODEL.METHOD 'TokenMean'" in errors[2]
    meta = eval(out.split("META ", 1)[1].splitlines()[0])
    assert meta["method"] == "TokenMean" and meta["num_classes"] == 16 and meta["modalities"] == ["RGB", "NI", "TI"]
    assert "MODEL.TOKENMEAN.MEAN_ONLY False" in errors[4]
