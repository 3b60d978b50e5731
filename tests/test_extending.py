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
from .helpers import newest_stack_only, python

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
        with open(path, "a" if how == "append" else "w") as f:
            f.write(("\n" if how == "append" else "") + text)
        touched.append(rel)
    return touched


def run(repo, *args, expect=0):
    """``python args...`` in the copy ``repo`` (which alone is on the path)."""
    return python(*args, cwd=repo, expect=expect, timeout=600,
                  env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def train_with_the_doc_yaml(section, repo, tmp_path):
    """train.py in ``repo`` with the section's YAML (its data and output folders under ``tmp_path``);
    returns (config file, the run's log)."""
    (text,) = blocks(section, "yaml")
    cfg = yaml.safe_load(text)
    cfg["DATASETS"]["ROOT_DIR"], cfg["OUTPUT_DIR"] = str(tmp_path / "data"), str(tmp_path / "run")
    (tmp_path / "run.yml").write_text(yaml.safe_dump(cfg))
    run(repo, "train.py", "--config_file", str(tmp_path / "run.yml"))
    return str(tmp_path / "run.yml"), open(tmp_path / "run" / "train_log.txt").read()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return repository_copy(str(tmp_path_factory.mktemp("repo")))


@newest_stack_only
def test_a_new_dataset_layout_is_one_module_and_one_import(repo, tmp_path):
    section = doc_section("A dataset layout")
    assert apply_file_blocks(section, repo) == ["data/datasets/mmveh.py", "data/datasets/__init__.py"]
    data = str(tmp_path / "mmveh")
    (command,) = blocks(section, "bash")
    run(repo, "-c", re.search(r'python -c "(.*)"', command).group(1).replace("/tmp/mmveh", data))
    folder = os.path.join(data, "MMVeh")
    assert sorted(os.listdir(folder)) == [".synthetic.json", "gallery", "query", "train"]
    assert "0001_c1_00_nir.png" in os.listdir(os.path.join(folder, "train"))
    (text,) = blocks(section, "yaml")
    cfg = yaml.safe_load(text)
    cfg["DATASETS"]["ROOT_DIR"], cfg["OUTPUT_DIR"] = data, str(tmp_path / "run")
    (tmp_path / "mmveh.yml").write_text(yaml.safe_dump(cfg))
    run(repo, "train.py", "--config_file", str(tmp_path / "mmveh.yml"))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    final = [r for r in records if "mAP" in r]
    assert final and 0 < final[-1]["mAP"] <= 1
    # the dataset reports 48 training identities and evaluates 48 queries (2 per test identity)
    log = open(tmp_path / "run" / "train_log.txt").read()
    assert re.search(r"train\s+\|\s+48 \|\s+384 \|", log) and re.search(r"query\s+\|\s+24 \|\s+48 \|", log)
    # the registry lists it for an unknown name, and a missing sample file is reported by name
    os.remove(os.path.join(folder, "query", "0049_c1_00_tir.png"))
    r = run(repo, "test.py", "--config_file", tmp_path / "mmveh.yml", "TEST.WEIGHT", tmp_path / "run" / "best.pth",
            expect=2)
    assert "0049_c1_00_rgb.png (no file of that name in: _tir)" in r.stderr, r.stderr[-2000:]
    r = run(repo, "train.py", "--config_file", tmp_path / "mmveh.yml", "DATASETS.NAMES", "MMVeh2", expect=2)
    assert "'MMVeh'" in r.stderr and "got 'MMVeh2'" in r.stderr, r.stderr[-2000:]


@newest_stack_only
def test_a_backbone_timm_does_not_build_is_one_module_and_one_import(repo, tmp_path):
    section = doc_section("A backbone that is not a timm ViT")
    assert apply_file_blocks(section, repo) == ["modeling/torch_vit.py", "modeling/__init__.py"]
    config, log = train_with_the_doc_yaml(section, repo, tmp_path)
    assert "Model: torch_vit_tiny" in log and "RANDOM weights" not in log  # small: no random-weights warning
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r for r in records if "mAP" in r]
    # the backbone's parameters train at the spec's LR rule (BASE_LR x BACKBONE_LR_FACTOR), the heads at BASE_LR
    probe = ("import sys; sys.argv[1:] = []; from config import load_config; from modeling import build_model; "
             "from solver import build_optimizer; cfg = load_config(%r); m = build_model(cfg, 4, 3); "
             "o = build_optimizer(cfg, m); ids = {id(p): n for n, p in m.named_parameters()}; "
             "part = lambda n: n.split('.')[n.startswith('backbone.')]; "
             "print(sorted({(part(ids[id(p)]), g['lr']) for g in o.param_groups for p in g['params'] "
             "if ids[id(p)].endswith('weight')}))" % config)
    lrs = dict(eval(run(repo, "-c", probe).stdout.strip().splitlines()[-1]))
    assert lrs["vit"] == pytest.approx(3.5e-4 * 0.8) and lrs["sim"] == pytest.approx(3.5e-4)
    # no converter: MODEL.PRETRAIN_PATH is refused by name (exit code 2, one line)
    ckpt = tmp_path / "w.pth"
    import torch
    torch.save({"patch_embed.weight": torch.zeros(1)}, ckpt)
    r = run(repo, "train.py", "--config_file", config, "OUTPUT_DIR", tmp_path / "run2", "MODEL.PRETRAIN_PATH", ckpt,
            expect=2)
    assert "the backbone torch_vit_tiny takes no pretrained checkpoint" in r.stderr, r.stderr[-2000:]


@newest_stack_only
def test_a_branch_is_one_module_and_its_config_keys(repo, tmp_path):
    section = doc_section("A branch like SIM, GAM or LAM")
    assert apply_file_blocks(section, repo) == ["modeling/branches/patch_mean.py", "config/defaults.py"]
    config, log = train_with_the_doc_yaml(section, repo, tmp_path)
    assert "test feature 576-d" in log
    (record,) = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert {"id_patch_mean", "tri_patch_mean", "patch_mean", "id_sim", "gam", "lam", "mAP"} <= set(record)
    assert record["patch_mean"] > 0
    # the checkpoint holds the branch and its head; evaluating it with the branch off is refused by name
    r = run(repo, "test.py", "--config_file", config, "TEST.WEIGHT", tmp_path / "run" / "best.pth",
            "MODEL.USE_PATCH_MEAN", "no", expect=2)
    assert "MODEL.USE_PATCH_MEAN True" in r.stderr, r.stderr[-2000:]
    run(repo, "test.py", "--config_file", config, "TEST.WEIGHT", str(tmp_path / "run" / "best.pth"))
    # a resume cannot switch it off
    r = run(repo, "train.py", "--config_file", config, "--resume", "--allow-change", "all", "MODEL.USE_PATCH_MEAN",
            "no", "SOLVER.MAX_EPOCHS", "2", expect=2)
    assert "MODEL.USE_PATCH_MEAN" in r.stderr, r.stderr[-2000:]
