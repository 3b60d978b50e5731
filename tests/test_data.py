import os

import numpy as np
import pytest
import torch
from PIL import Image

from data import DatasetError, IdentitySampler, MultiModalImageDataset, build_dataloaders
from data.datasets import MSVR310, RGBNT100, RGBNT201, write_synthetic
from data.transforms import ImageTransform

from .helpers import log_records

KW = dict(num_train_ids=4, num_test_ids=3, images_per_id=4, num_cameras=2, size=(32, 16))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    roots = {}
    for layout in ("RGBNT201", "RGBNT100", "MSVR310"):
        roots[layout] = write_synthetic(str(tmp_path_factory.mktemp(layout)), layout, **KW)
    return roots


def test_rgbnt201_parser(layouts):
    ds = RGBNT201(layouts["RGBNT201"])
    assert len(ds.train) == 16 and len(ds.query) == 12 and ds.gallery is ds.query and ds.gallery_is_query
    assert sorted({s.pid for s in ds.train}) == [0, 1, 2, 3]         # relabelled
    assert {s.pid for s in ds.query} == {5, 6, 7}                    # original ids from the names
    assert {s.camid for s in ds.train} == {0, 1}                     # 0-based
    s = ds.train[0]
    assert [os.path.basename(os.path.dirname(p)) for p in s.paths] == ["RGB", "NI", "TI"]
    assert len({os.path.basename(p) for p in s.paths}) == 1


def test_rgbnt100_parser(layouts):
    ds = RGBNT100(layouts["RGBNT100"])
    assert ds.tiled and len(ds.train) == 16 and len(ds.query) == 6 and len(ds.gallery) == 6
    item = MultiModalImageDataset(ds.query, ImageTransform((32, 16), False, [0.5] * 3, [0.5] * 3), True)[0]
    assert item["RGB"].shape == (32, 16, 3) and item["RGB"].dtype == torch.uint8
    assert not torch.equal(item["RGB"], item["TI"])                  # the three tiles differ


def test_msvr310_parser(layouts):
    ds = MSVR310(layouts["MSVR310"])
    assert len(ds.train) == 16 and len(ds.query) == 6 and len(ds.gallery) == 6
    assert {s.sceneid for s in ds.query} == {0, 1}
    assert [os.path.basename(os.path.dirname(p)) for p in ds.train[0].paths] == ["vis", "ni", "th"]


def test_id_maps_are_sorted_and_deterministic(layouts):
    a, b = RGBNT201(layouts["RGBNT201"]), RGBNT201(layouts["RGBNT201"])
    assert [(s.paths, s.pid) for s in a.train] == [(s.paths, s.pid) for s in b.train]
    first = {}
    for s in a.train:
        first.setdefault(s.pid, int(os.path.basename(s.paths[0])[:6]))
    assert [first[p] for p in sorted(first)] == sorted(first.values())


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("layout,folder,mods", [("RGBNT201", "RGBNT201/train_171", ("RGB", "NI", "TI")),
                                                 ("MSVR310", "MSVR310/bounding_box_train/0001", ("vis", "ni", "th"))])
def test_samples_are_paired_across_every_modality_folder(layouts, tmp_path, layout, folder, mods):
    """A file missing from any modality folder, the first one included, is an error naming every lone file;
    DATASETS.SKIP_UNPAIRED leaves those samples out with a warning."""
    root = _copy(layouts[layout], str(tmp_path / layout))
    cls = {"RGBNT201": RGBNT201, "MSVR310": MSVR310}[layout]
    base = os.path.join(root, folder)
    names = sorted(os.listdir(os.path.join(base, mods[0])))
    for name in names[:2]:                                      # the RGB / vis files of two samples
        os.remove(os.path.join(base, mods[0], name))
    os.remove(os.path.join(base, mods[2], names[2]))            # and the thermal file of a third
    with pytest.raises(DatasetError) as info:
        cls(root)
    msg = str(info.value)
    assert "split 'train': 6 files have no partner" in msg and "DATASETS.SKIP_UNPAIRED" in msg
    assert f"{os.path.join(base, mods[1], names[0])} (no file of that name in: {mods[0]})" in msg
    assert f"{os.path.join(base, mods[0], names[2])} (no file of that name in: {mods[2]})" in msg
    with log_records("signal.data") as records:
        ds = cls(root, skip_unpaired=True)
    assert len(ds.train) == 13 and "leaving out 6 files" in records[0].getMessage()
    assert all(len({os.path.basename(p) for p in s.paths}) == 1 for s in ds.train)


@pytest.mark.parametrize("layout,rel,bad", [
    ("RGBNT201", "RGBNT201/test/{m}", "person_cam1.jpg"),
    ("RGBNT100", "RGBNT100/rgbir/query", "0001_x01.jpg"),
    ("MSVR310", "MSVR310/bounding_box_train/0001/{m}", "0001_sxx1_v9_000.jpg"),
])
def test_unparseable_name_is_an_error(layouts, tmp_path, layout, rel, bad):
    root = _copy(layouts[layout], str(tmp_path / layout))
    for m in ({"RGBNT201": ("RGB", "NI", "TI"), "MSVR310": ("vis", "ni", "th")}.get(layout, ("",))):
        folder = os.path.join(root, rel.format(m=m))
        os.makedirs(folder, exist_ok=True)
        Image.new("RGB", (16, 32)).save(os.path.join(folder, bad))
    cls = {"RGBNT201": RGBNT201, "RGBNT100": RGBNT100, "MSVR310": MSVR310}[layout]
    with pytest.raises(DatasetError, match=f"cannot parse file name .*{bad}"):
        cls(root)


@pytest.mark.parametrize("layout,rel", [("RGBNT201", "RGBNT201/test"), ("RGBNT100", "RGBNT100/rgbir/query"),
                                        ("MSVR310", "MSVR310/query3")])
def test_empty_split_is_an_error(layouts, tmp_path, layout, rel):
    import shutil
    root = _copy(layouts[layout], str(tmp_path / layout))
    folder = os.path.join(root, rel)
    shutil.rmtree(folder)
    os.makedirs(folder)
    for m in (("RGB", "NI", "TI") if layout == "RGBNT201" else ()):
        os.makedirs(os.path.join(folder, m))
    cls = {"RGBNT201": RGBNT201, "RGBNT100": RGBNT100, "MSVR310": MSVR310}[layout]
    with pytest.raises(DatasetError, match="empty split"):
        cls(root)


def test_unreadable_image_names_the_file(layouts, tmp_path):
    root = _copy(layouts["RGBNT201"], str(tmp_path / "u"))
    ds = RGBNT201(root)
    victim = ds.train[3].paths[1]
    with open(victim, "wb") as f:
        f.write(b"not an image")
    data = MultiModalImageDataset(ds.train, ImageTransform((32, 16), False, [0.5] * 3, [0.5] * 3))
    with pytest.raises(DatasetError, match=f"cannot read image {victim}"):
        data[3]


def test_missing_dataset_folder(tiny_cfg, tmp_path):
    cfg = tiny_cfg("DATASETS.NAMES", "RGBNT201", "DATASETS.ROOT_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="DATASETS.ROOT_DIR"):
        build_dataloaders(cfg)


def test_sampler_pk_structure():
    pids = np.repeat(np.arange(10), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    sampler = IdentitySampler(pids, batch_size=12, num_instances=4, seed=3)
    pairs = list(sampler)
    idx = [i for i, _ in pairs]
    seeds = [s for _, s in pairs]
    assert len(set(seeds)) == len(seeds)             # one augmentation seed per position
    assert len(idx) % 12 == 0 and len(idx) > 0
    for b in range(0, len(idx), 12):
        batch = pids[idx[b:b + 12]]
        ids, counts = np.unique(batch, return_counts=True)
        assert len(ids) == 3 and (counts == 4).all()
        assert [batch[i] for i in range(0, 12, 4)] == [batch[i + 3] for i in range(0, 12, 4)]
    assert list(sampler) == pairs                    # same epoch, same stream
    sampler.set_epoch(1)
    assert [s for _, s in sampler] != seeds and [i for i, _ in sampler] != idx


def test_sampler_shards_disjointly_by_rank():
    pids = np.repeat(np.arange(12), 8)
    ranks = [list(IdentitySampler(pids, 16, 4, seed=0, num_replicas=2, rank=r)) for r in range(2)]
    full = list(IdentitySampler(pids, 16, 4, seed=0))     # (index, augmentation seed) pairs
    assert len(ranks[0]) == len(ranks[1]) == len(full) // 2
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(full)


def test_sampler_rejects_too_few_identities():
    with pytest.raises(ValueError, match="identities"):
        IdentitySampler([0, 0, 1, 1], batch_size=12, num_instances=2)


def _aug_images():
    rng = np.random.default_rng(0)
    return {m: rng.integers(0, 255, (32, 16, 3), dtype=np.uint8) for m in ("RGB", "NI", "TI")}


def test_shared_augmentation_draws_one_set_of_parameters():
    import random
    imgs = _aug_images()
    same = {m: imgs["RGB"] for m in imgs}
    shared = ImageTransform((32, 16), True, [0.5] * 3, [0.5] * 3, padding=4, erase_prob=1.0, shared=True)
    indep = ImageTransform((32, 16), True, [0.5] * 3, [0.5] * 3, padding=4, erase_prob=1.0, shared=False)
    for seed in range(5):
        out = shared(same, random.Random(seed))
        assert all(torch.equal(out[m], out["RGB"]) for m in imgs)               # one flip and crop
        assert all(torch.equal(out["erase"][m], out["erase"]["RGB"]) for m in imgs)  # one erased box
        assert out["erase"]["RGB"][2] > 0                                      # erase_prob 1: a box
    outs = [indep(same, random.Random(seed)) for seed in range(5)]
    assert any(not torch.equal(o["RGB"], o["NI"]) for o in outs)
    assert any(not torch.equal(o["erase"]["RGB"], o["erase"]["NI"]) for o in outs)


def test_test_transform_is_deterministic():
    imgs = _aug_images()
    t = ImageTransform((32, 16), False, [0.5] * 3, [0.5] * 3)
    a, b = t(imgs), t(imgs)
    assert all(torch.equal(a[m], b[m]) and np.array_equal(a[m].numpy(), imgs[m]) for m in imgs)
    x = t.to_device({m: a[m][None] for m in imgs}, list(imgs), torch.device("cpu"))["RGB"]
    assert x.shape == (1, 3, 32, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_build_dataloaders_on_synthetic(tiny_cfg):
    train, test, nq, nc, ncam = build_dataloaders(tiny_cfg())
    batch = next(iter(train))
    assert set(batch) >= {"RGB", "NI", "TI", "pid", "camid", "sceneid", "index"}
    assert batch["RGB"].shape == (8, 64, 32, 3) and batch["RGB"].dtype == torch.uint8   # normalised on the device
    assert batch["erase"]["RGB"].shape == (8, 4) and batch["seed"].dtype == torch.int64
    images = train.dataset.to_device(batch, ("RGB", "NI", "TI"), torch.device("cpu"))
    assert images["RGB"].shape == (8, 3, 64, 32) and images["RGB"].dtype == torch.float32
    assert nc == 6 and nq == 16 and len(test.dataset) == nq and ncam == 3


def test_split_validation_holds_out_identities(layouts):
    from data import split_validation
    ds = RGBNT201(layouts["RGBNT201"])
    train, val = split_validation(ds.train, 0.5, seed=0)
    assert len({s.pid for s in val}) == 2 and sorted({s.pid for s in train}) == [0, 1]
    assert len(train) + len(val) == len(ds.train)
    assert not {s.paths for s in train} & {s.paths for s in val}
    with pytest.raises(ValueError, match="VAL_IDS"):
        split_validation(ds.train, 10, seed=0)


def _copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from data import read_image
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 1023).astype(np.uint16)
    path = str(tmp_path / "thermal.png")
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")           # stored as 16-bit
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and rgb.min() < 10 and rgb.max() == 255
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match="f.tif: floating-point image"):
        read_image(str(tmp_path / "f.tif"))


def test_hidden_files_are_skipped(layouts, tmp_path):
    root = _copy_tree(layouts["RGBNT201"], str(tmp_path / "h"))
    n = len(RGBNT201(root).train)
    for m in ("RGB", "NI", "TI"):
        with open(os.path.join(root, "RGBNT201", "train_171", m, "._000001_cam1_00.jpg"), "wb") as f:
            f.write(b"\x00\x05\x16\x07 macOS resource fork")
    assert len(RGBNT201(root).train) == n
    msvr = _copy_tree(layouts["MSVR310"], str(tmp_path / "m"))
    n = len(MSVR310(msvr).train)
    os.makedirs(os.path.join(msvr, "MSVR310", "bounding_box_train", ".ipynb_checkpoints"))
    assert len(MSVR310(msvr).train) == n


def _layout_cfg(tiny_cfg, root, layout="RGBNT201", *extra):
    return tiny_cfg("DATASETS.NAMES", layout, "DATASETS.ROOT_DIR", root, "SOLVER.IMS_PER_BATCH", "4",
                    "DATALOADER.NUM_INSTANCE", "2", *extra)


@pytest.mark.parametrize("split,index", [("train", 5), ("test", 2)])
def test_a_bad_image_in_any_split_stops_the_start(layouts, tmp_path, tiny_cfg, split, index):
    root = _copy_tree(layouts["RGBNT201"], str(tmp_path / "b"))
    ds = RGBNT201(root)
    victim = (ds.train if split == "train" else ds.query)[index].paths[2]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:len(data) // 2])        # truncated JPEG: the header still opens
    with pytest.raises(DatasetError, match=f"1 of \\d+ images cannot be used:\n  {victim}: "):
        build_dataloaders(_layout_cfg(tiny_cfg, root))


def test_a_test_split_without_valid_queries_stops_the_start(layouts, tmp_path, tiny_cfg):
    root = _copy_tree(layouts["RGBNT201"], str(tmp_path / "q"))
    folder = os.path.join(root, "RGBNT201", "test")
    for m in ("RGB", "NI", "TI"):                           # every test image from camera 1 only
        for name in os.listdir(os.path.join(folder, m)):
            if "_cam1_" not in name:
                os.remove(os.path.join(folder, m, name))
    with pytest.raises(DatasetError, match="no query has a true match in the gallery .*another camera"):
        build_dataloaders(_layout_cfg(tiny_cfg, root))


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DatasetError("cannot read image /data/x.jpg: broken data stream")


def test_an_error_in_a_dataloader_worker_is_one_line():
    from engine.setup import error_message
    loader = torch.utils.data.DataLoader(_Broken(), num_workers=1)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)
    assert error_message(info.value) == "cannot read image /data/x.jpg: broken data stream"


def test_sampler_length_is_the_epochs_exact_length():
    pids = np.repeat(np.arange(7), [2, 3, 5, 7, 9, 11, 13])
    sampler = IdentitySampler(pids, batch_size=12, num_instances=3, seed=0)
    lengths = set()
    for epoch in range(8):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == len(sampler)
        lengths.add(len(sampler))
    assert len(lengths) > 1                                  # P x K epochs differ in length
