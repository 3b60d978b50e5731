"""WMVeID863, Market1501-MM and configured (Custom) datasets in their on-disk layouts, modality pairing by
file name, and cross-dataset evaluation without the training split."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from config import load_config
from data import build_dataloaders, build_test_dataloader
from data.datasets import DatasetError, Market1501MM, WMVeID863, build_dataset, write_synthetic

from .conftest import TINY
from .helpers import log_records

KW = dict(num_train_ids=4, num_test_ids=3, images_per_id=4, num_cameras=2, size=(32, 16))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return {layout: write_synthetic(str(tmp_path_factory.mktemp(layout)), layout, **KW)
            for layout in ("WMVeID863", "Market1501-MM", "RGBNT201")}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _cfg(root, *opts):
    return load_config("", TINY + ["DATASETS.ROOT_DIR", root, "SOLVER.IMS_PER_BATCH", "4",
                                   "DATALOADER.NUM_INSTANCE", "2", *opts])


def test_wmveid863_layout_names_and_folder_aliases(roots, tmp_path):
    ds = WMVeID863(roots["WMVeID863"])
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (16, 6, 6)
    assert all(len({os.path.basename(p) for p in s.paths}) == 1 for s in ds.train + ds.query + ds.gallery)
    assert {s.camid for s in ds.query} == {0, 1} and {s.sceneid for s in ds.gallery} == {999}
    assert {s.pid for s in ds.query} == {5, 6, 7}                   # the folder names
    for alias in ("WMVEID863", "MSVWild863"):
        root = str(tmp_path / alias)
        shutil.copytree(os.path.join(roots["WMVeID863"], "WMVeID863"), os.path.join(root, alias))
        assert len(build_dataset(_cfg(root, "DATASETS.NAMES", "MSVWild863")).query) == 6
    with pytest.raises(DatasetError, match="expected one of the folders .*WMVEID863.*MSVWild863"):
        WMVeID863(str(tmp_path / "nothing"))


def test_wmveid863_pairs_by_name_and_reports_every_partnerless_file(roots, tmp_path):
    root = _copy(roots["WMVeID863"], str(tmp_path / "w"))
    vdir = os.path.join(root, "WMVeID863", "train", "0001")
    lost = os.path.join(vdir, "th", "v1_n1_s1_0001.jpg")
    os.remove(lost)
    extra = os.path.join(vdir, "ni", "v0_n0_s0_0099.jpg")
    shutil.copy(os.path.join(vdir, "ni", "v0_n0_s0_0000.jpg"), extra)
    with pytest.raises(DatasetError) as info:
        WMVeID863(root)
    msg = str(info.value)
    assert "split 'train': 3 files have no partner" in msg and "DATASETS.SKIP_UNPAIRED" in msg
    assert f"{os.path.join(vdir, 'vis', 'v1_n1_s1_0001.jpg')} (no file of that name in: th)" in msg
    assert f"{extra} (no file of that name in: vis, th)" in msg
    with log_records("signal.data") as records:
        ds = WMVeID863(root, skip_unpaired=True)
    assert len(ds.train) == 15 and "v0_n0_s0_0099.jpg" in records[0].getMessage()
    # every kept sample holds three files of one name, whatever the directory listing order
    assert all(len({os.path.basename(p) for p in s.paths}) == 1 for s in ds.train)


def test_wmveid863_evaluates_with_the_camera_rule(roots):
    from data.datasets import dataset_of
    cfg = _cfg(roots["WMVeID863"], "DATASETS.NAMES", "WMVeID863")
    assert dataset_of(cfg).protocol_for(cfg) == "camera"
    _, loader, nq, _, _ = build_dataloaders(cfg)
    assert nq == 6 and len(loader.dataset) == 12


def test_market1501_mm_junk_distractors_and_aliases(roots, tmp_path):
    ds = Market1501MM(roots["Market1501-MM"])
    assert -1 not in {s.pid for s in ds.train + ds.query + ds.gallery}
    assert 0 in {s.pid for s in ds.gallery} and 0 not in {s.pid for s in ds.query}
    assert {s.camid for s in ds.gallery} <= set(range(6)) and len(ds.query) == 6 and len(ds.gallery) == 7
    for alias in ("Market-1501-RGBNT", "market1501_to_RGBNT201_dark"):
        root = str(tmp_path / alias)
        shutil.copytree(os.path.join(roots["Market1501-MM"], "Market1501-MM"), os.path.join(root, alias))
        assert len(Market1501MM(root).gallery) == 7


def _custom_rgb_only(tmp_path, roots):
    """Market-style RGB-only data: one folder of images per split, run as RGB three times."""
    src = os.path.join(roots["Market1501-MM"], "Market1501-MM")
    base = tmp_path / "mydata" / "Market-RGB"
    for split in ("train", "query", "gallery"):
        shutil.copytree(os.path.join(src, split, "RGB"), base / split / "images")
    return str(tmp_path / "mydata")


RGB_ONLY = ["DATASETS.NAMES", "Custom", "DATASETS.CUSTOM.FOLDER", "Market-RGB",
            "DATASETS.CUSTOM.MODALITY_FOLDERS", "['images', 'images', 'images']"]


def test_custom_rgb_only_data_runs_as_rgb_three_times(roots, tmp_path):
    root = _custom_rgb_only(tmp_path, roots)
    ds = build_dataset(_cfg(root, *RGB_ONLY))
    assert len(ds.train) == 16 and len(ds.gallery) == 7               # id -1 ignored, id 0 kept
    assert all(s.paths[0] == s.paths[1] == s.paths[2] for s in ds.train)
    assert {s.camid for s in ds.query} == {0, 1}


def test_custom_tiled_layout_with_id_folders_scenes_and_tile_order(tmp_path):
    """Tiles stored TI | RGB | NI, one folder per identity, names '<scene>-<camera 0-based>-<n>.png'."""
    base = tmp_path / "data" / "tiles"
    colours = {"RGB": 200, "NI": 120, "TI": 40}
    for split, ids in (("train", (1, 2, 3)), ("test", (4, 5))):
        for pid in ids:
            for k in range(4):
                arr = np.concatenate([np.full((16, 8, 3), colours[m], np.uint8) for m in ("TI", "RGB", "NI")], 1)
                path = base / split / f"{pid:03d}" / f"{k % 2}-{k % 2}-{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    opts = ["DATASETS.NAMES", "Custom", "DATASETS.CUSTOM.FOLDER", "tiles", "DATASETS.CUSTOM.TRAIN", "train",
            "DATASETS.CUSTOM.QUERY", "test", "DATASETS.CUSTOM.GALLERY", "test", "DATASETS.CUSTOM.ID_FOLDERS", "yes",
            "DATASETS.CUSTOM.TILED", "yes", "DATASETS.CUSTOM.TILE_ORDER", "['TI', 'RGB', 'NI']",
            "DATASETS.CUSTOM.PATTERN", r"^(?P<scene>\d+)-(?P<camera>\d+)-", "DATASETS.CUSTOM.CAMERA_BASE", "0",
            "DATASETS.CUSTOM.PROTOCOL", "scene"]
    cfg = _cfg(str(tmp_path / "data"), *opts)
    train_loader, test_loader, nq, ncls, ncam = build_dataloaders(cfg)
    ds = test_loader.reid_dataset
    assert ds.gallery_is_query and nq == 8 and ncls == 3 and ncam == 2 and ds.uses_scenes
    images = test_loader.dataset.load(0)
    assert {m: int(images[m][0, 0, 0]) for m in images} == colours


@pytest.mark.parametrize("opts,match", [
    (["DATASETS.CUSTOM.PATTERN", "(?P<id>\\d+"], "is not a regular expression"),
    (["DATASETS.CUSTOM.PATTERN", "(?P<id>\\d+)"], "needs a named group \\(\\?P<camera>"),
    (["DATASETS.CUSTOM.PATTERN", "^(?P<id>\\d+)_c(?P<camera>\\d)", "DATASETS.CUSTOM.PROTOCOL", "scene"],
     "PROTOCOL scene needs a named group"),
    (["DATASETS.CUSTOM.FOLDER", "missing"], "missing DATASETS.CUSTOM.FOLDER folder"),
    (["DATASETS.CUSTOM.TILED", "yes"], "TILED yes expects image files directly in .*train.* set DATASETS.CUSTOM.TILED no"),
    (["DATASETS.CUSTOM.ID_FOLDERS", "yes"], "ID_FOLDERS yes expects .* holds the modality folders images directly"),
    (["DATASETS.CUSTOM.MODALITY_FOLDERS", "['RGB', 'NI', 'TI']"],
     "holds the folders images but none of the modality folders .* set DATASETS.CUSTOM.ID_FOLDERS yes"),
    (["DATASETS.CUSTOM.IGNORE_IDS", "['-1']"], r"IGNORE_IDS must list integer identities .*got \['-1'\]"),
    (["DATASETS.CUSTOM.PATTERN", "(?P<id>\\d+)_c(?P<camera>\\d)"],
     "-1_c1s1_000000_00.jpg: DATASETS.CUSTOM.PATTERN .* reads id '1' out of the middle of a number"),
    (["DATASETS.CUSTOM.PATTERN", "^(?P<id>\\d{2})\\d*_c(?P<camera>\\d)"], "reads id '00' out of the middle"),
    (["DATASETS.CUSTOM.IGNORE_IDS", "[1, 2, 3, 4, 5, 6, 7, -1, 0]"],
     "empty split 'train': all 16 images .* were left out \\(DATASETS.CUSTOM.IGNORE_IDS"),
])
def test_custom_config_errors_name_the_key(roots, tmp_path, opts, match):
    root = _custom_rgb_only(tmp_path, roots)
    with pytest.raises(DatasetError, match=match):
        build_dataset(_cfg(root, *RGB_ONLY, *opts))


def test_custom_flat_images_without_tiled_name_the_key(roots, tmp_path):
    root = _custom_rgb_only(tmp_path, roots)
    train = os.path.join(root, "Market-RGB", "train")
    for name in os.listdir(os.path.join(train, "images")):
        shutil.move(os.path.join(train, "images", name), train)
    os.rmdir(os.path.join(train, "images"))
    with pytest.raises(DatasetError, match="holds 16 images directly and none of the modality folders .* set "
                                           "DATASETS.CUSTOM.TILED yes"):
        build_dataset(_cfg(root, *RGB_ONLY))


def test_market1501_mm_query_of_junk_and_distractors_only_says_so(roots, tmp_path):
    root = _copy(roots["Market1501-MM"], str(tmp_path / "m"))
    query = os.path.join(root, "Market1501-MM", "query")
    for m in ("RGB", "NI", "TI"):
        for name in os.listdir(os.path.join(query, m)):
            os.rename(os.path.join(query, m, name), os.path.join(query, m, "0000" + name[name.index("_"):]))
    with pytest.raises(DatasetError, match="empty split 'query': all \\d+ images under .* were left out "
                                           "\\(identity -1 is junk, identity 0 distractors"):
        Market1501MM(root)


def test_custom_config_shape_errors_at_load():
    with pytest.raises(ValueError, match="MODALITY_FOLDERS must name 3 folders"):
        load_config("", ["DATASETS.NAMES", "Custom", "DATASETS.CUSTOM.FOLDER", "x",
                         "DATASETS.CUSTOM.MODALITY_FOLDERS", "['a', 'b']"])
    with pytest.raises(ValueError, match="needs DATASETS.CUSTOM.FOLDER"):
        load_config("", ["DATASETS.NAMES", "Custom"])


def test_custom_training_from_yaml_alone(roots, tmp_path, monkeypatch):
    root = _custom_rgb_only(tmp_path, roots)
    yml = tmp_path / "rgb_only.yml"
    yml.write_text("DATASETS:\n  NAMES: Custom\n  ROOT_DIR: " + root + "\n  CUSTOM:\n    FOLDER: Market-RGB\n"
                   "    MODALITY_FOLDERS: [images, images, images]\n    PATTERN: '^(?P<id>-?\\d+)_c(?P<camera>\\d)'\n")
    from .test_end_to_end import run_train_inprocess
    out = tmp_path / "out"
    run_train_inprocess(["--config_file", str(yml)] + TINY[:TINY.index("DATASETS.NAMES")]
                        + TINY[TINY.index("DATASETS.NAMES") + 2:]
                        + ["SOLVER.IMS_PER_BATCH", "4", "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCHS", "1"], monkeypatch)
    assert "mAP" in json.loads(open(out / "metrics.jsonl").readline())


def test_cross_dataset_evaluation_needs_no_training_split(roots, tmp_path, synth_root, monkeypatch):
    """A model trained on the synthetic RGBNT201-layout data (3 cameras, 6 ids) is evaluated on
    WMVeID863-layout data with 8 cameras, other identities and no training split on disk."""
    from .test_end_to_end import opts, run_train_inprocess
    out = str(tmp_path / "run")
    run_train_inprocess(opts(synth_root, out, "SOLVER.MAX_EPOCHS", "1"), monkeypatch)
    target = str(tmp_path / "target")
    write_synthetic(target, "WMVeID863", num_train_ids=2, num_test_ids=3, images_per_id=8, num_cameras=8,
                    size=(64, 32))
    shutil.rmtree(os.path.join(target, "WMVeID863", "train"))
    import test as test_script
    results = {}
    for mode in ("index", "mean"):
        monkeypatch.setattr(sys, "argv", ["test.py", *TINY, "DATASETS.NAMES", "WMVeID863", "DATASETS.ROOT_DIR", target,
                                          "OUTPUT_DIR", out, "TEST.WEIGHT", os.path.join(out, "best.pth"),
                                          "TEST.CAMERA_EMBEDDING", mode])
        test_script.main()
        results[mode] = [p for p in os.listdir(out) if p.startswith("test_best_WMVeID863_")
                         and p not in sum(results.values(), [])]
        assert len(results[mode]) == 1                      # the other camera rule writes its own file
        result = json.load(open(os.path.join(out, results[mode][0])))
        assert 0 <= result["mAP"] <= 1 and result["config"]["TEST"]["CAMERA_EMBEDDING"] == mode
    log = open(os.path.join(out, "test_log.txt")).read()
    assert "has 8 cameras, the model's camera table 3: cameras 3 and above get the table's mean" in log
    loader, nq, ds = build_test_dataloader(_cfg(target, "DATASETS.NAMES", "WMVeID863"))
    assert ds.train == [] and nq == 6


def test_camera_embedding_modes(tiny_cfg):
    from modeling import build_model
    torch.manual_seed(0)
    b = build_model(tiny_cfg(), 5, 3).backbone
    cams = torch.tensor([0, 2, 3, 7])
    rows = b.camera_embedding(cams)
    mean = b.cam_embed.mean(0)
    assert torch.equal(rows[0], b.cam_embed[0]) and torch.equal(rows[1], b.cam_embed[2])
    assert torch.equal(rows[2], mean) and torch.equal(rows[3], mean)
    b.camera_mode = "mean"
    assert all(torch.equal(r, mean) for r in b.camera_embedding(cams))
