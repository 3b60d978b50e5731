"""The uint8 data pipeline: the loader's half (decode, resize, flip, pad, crop in uint8) and the device's half
(float, normalise, random erasing) against the recipe's float pipeline (reference/transforms.py): the same
pixels for the same flip and crop, the same distribution of flips and erased boxes; the decoded cache
(DATALOADER.CACHE ram) gives the same batches as the files, with and without workers, and is refused when it
would not fit."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data import MultiModalImageDataset, build_dataloaders, read_image, read_pixels
from data.cache import CacheError, check_fits
from data.checks import JPEG_DECODERS, jpeg_decoder, jpeg_usable
from data.datasets import RGBNT201, write_synthetic
from data.transforms import ImageTransform, erase_box
from reference.transforms import FloatTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """An RGBNT201 layout whose JPEGs (40 x 20) are not at the input size (32 x 16): the resize runs."""
    root = write_synthetic(str(tmp_path_factory.mktemp("pipe")), "RGBNT201", num_train_ids=4, num_test_ids=2,
                           images_per_id=3, num_cameras=2, size=(40, 20))
    return RGBNT201(root)


def test_same_pixels_as_the_float_pipeline_for_the_same_flip_and_crop(jpegs):
    """Resize on uint8 + flip / pad / crop on uint8 + float / normalise on the device equals the recipe's
    order (resize, to float, flip, pad, crop, normalise) bit for bit."""
    size, pad = (32, 16), 3
    t = ImageTransform(size, True, MEAN, STD, padding=pad, erase_prob=0.0)
    ds = MultiModalImageDataset(jpegs.train, t)
    rng = random.Random(0)
    for i in range(len(jpegs.train)):
        item = t(ds.decode(i), rng)
        mods = list(ds.modalities)
        state = random.Random(0)
        for _ in range(i + 1):       # replay the draws: (flip, top, left, box) per modality
            params = [t.draw(state) for _ in mods]
        got = t.to_device({m: item[m][None] for m in mods}, mods, CPU)
        for m, p, (flip, top, left, _) in zip(mods, jpegs.train[i].paths, params):
            x = TF.to_image(read_image(p))
            x = TF.resize(x, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
            x = TF.to_dtype(x, torch.float32, scale=True)
            if flip:
                x = TF.horizontal_flip(x)
            x = TF.crop(TF.pad(x, [pad]), top, left, *size)
            x = TF.normalize(x, MEAN, STD)
            assert torch.equal(got[m][0], x), (i, m)


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)).max()


def _boxes(masks):
    """(erased?, area fraction, height, width) of each [H, W] boolean mask."""
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            out.append((0, 0.0, 0, 0))
        else:
            out.append((1, m.mean(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    return np.array(out, dtype=np.float64)


def test_flip_and_erasing_follow_the_recipe_distribution():
    """Over 2,000 samples at 256 x 128: the flip rate, the erasing rate and the erased boxes' area, height and
    width match the recipe's CPU transforms (torchvision's flip, timm's RandomErasing); the erased pixels are
    standard normal."""
    n, (h, w) = 2000, (256, 128)
    ramp = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (4, 1, 3)))
    ref = FloatTransform((4, 8), True, MEAN, STD, padding=0, erase_prob=0.0)   # the flip alone
    torch.manual_seed(0)
    ref_flips = []
    for _ in range(n):
        out = ref({"RGB": ramp})["RGB"]
        ref_flips.append(float(out[0, 0, 0] > out[0, 0, -1]))       # the ramp rises to the right unflipped
    ref_flips = np.array(ref_flips)
    from timm.data.random_erasing import RandomErasing
    erase = RandomErasing(probability=0.5, mode="pixel", max_count=1, device="cpu")
    random.seed(0)
    ref_boxes = _boxes([(erase(torch.zeros(3, h, w)) != 0).any(0).numpy() for _ in range(n)])

    t = ImageTransform((h, w), True, MEAN, STD, padding=10, erase_prob=0.5)
    rng = random.Random(1)
    draws = [t.draw(rng) for _ in range(n)]
    flips = np.array([float(d[0]) for d in draws])
    boxes = np.array([(eh > 0, eh * ew / (h * w), eh, ew) for _, _, _, (_, _, eh, ew) in draws], dtype=np.float64)
    assert abs(flips.mean() - ref_flips.mean()) < 0.05 and abs(flips.mean() - 0.5) < 0.03
    assert abs(boxes[:, 0].mean() - ref_boxes[:, 0].mean()) < 0.05          # erasing rate, both ~ 0.5
    on, ref_on = boxes[boxes[:, 0] > 0], ref_boxes[ref_boxes[:, 0] > 0]
    for k, what in ((1, "area"), (2, "height"), (3, "width")):
        assert _ks(on[:, k], ref_on[:, k]) < 0.1, what     # ~1,000 boxes each side; p ~ 1e-4 at 0.1

    # On the device: each drawn box is erased, exactly it, with standard-normal noise.
    m = 200
    batch = {"RGB": torch.full((m, h, w, 3), 128, dtype=torch.uint8), "seed": torch.tensor([7]),
             "erase": {"RGB": torch.tensor([d[3] for d in draws[:m]], dtype=torch.int32)}}
    x = t.to_device(batch, ["RGB"], CPU)["RGB"]
    plain = (torch.full((3, 1, 1), 128.0) * (1 / 255) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    masks = (x != plain).any(1)
    for (top, left, eh, ew), mask in zip((d[3] for d in draws[:m]), masks):
        want = torch.zeros(h, w, dtype=torch.bool)
        want[top:top + eh, left:left + ew] = True
        assert torch.equal(mask, want)
    noise = x.permute(1, 0, 2, 3)[:, masks]
    assert noise.numel() > 10 ** 5 and abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01


def test_erase_box_never_leaves_the_image():
    rng = random.Random(0)
    for _ in range(2000):
        top, left, eh, ew = erase_box(rng, 1.0, 16, 8)
        assert 0 <= top and top + eh <= 16 and 0 <= left and left + ew <= 8


def test_jpeg_decoder_gives_pils_pixels(jpegs):
    """The loader's decoder is the first usable of torchvision's and TorchCodec's (PIL when neither is), and
    each usable one decodes every file to PIL's pixels."""
    paths = [p for s in jpegs.train[:3] for p in s.paths]
    usable = [d for d in JPEG_DECODERS if jpeg_usable(d)]
    assert jpeg_decoder(paths) is (usable[0] if usable else None)
    for decode in usable:
        for p in paths:
            assert np.array_equal(read_pixels(p, decode), np.asarray(read_image(p)))
    for p in paths:
        assert np.array_equal(read_pixels(p), np.asarray(read_image(p)))


def test_a_decoder_that_differs_from_pil_is_not_chosen(jpegs, monkeypatch):
    import data.checks as checks
    paths = [p for s in jpegs.train[:2] for p in s.paths]
    off_by_one = lambda data: np.asarray(read_image(paths[0])) ^ 1  # noqa: E731
    monkeypatch.setattr(checks, "JPEG_DECODERS", (off_by_one,))
    monkeypatch.setattr(checks, "jpeg_usable", lambda d: True)
    assert checks.jpeg_decoder(paths) is None


def _batches(cfg, n=3):
    train = build_dataloaders(cfg, verify=False)[0]
    train.sampler.set_epoch(1)
    out = []
    for batch in train:
        out.append(train.dataset.to_device(batch, train.dataset.modalities, CPU))
        if len(out) == n:
            break
    return out


def test_cache_and_workers_give_the_same_batches(tiny_cfg):
    """Device batches (normalised, erased) from the files without workers, from the cache with and without
    2 workers: equal bit for bit."""
    files = _batches(tiny_cfg())
    cached = _batches(tiny_cfg("DATALOADER.CACHE", "ram"))
    workers = _batches(tiny_cfg("DATALOADER.CACHE", "ram", "DATALOADER.NUM_WORKERS", "2"))
    files_workers = _batches(tiny_cfg("DATALOADER.NUM_WORKERS", "2"))
    for other in (cached, workers, files_workers):
        for a, b in zip(files, other):
            assert all(torch.equal(a[m], b[m]) for m in a)
    assert any((a["RGB"] < -1.5).any() or (a["RGB"] > 1.5).any() for a in files)   # erased noise is there


def test_a_cache_that_does_not_fit_is_refused_with_the_figures():
    gib = 1024 ** 3
    with pytest.raises(CacheError, match=r"DATALOADER.CACHE ram: 10 samples needs 6.00 GiB .* 4.00 GiB of memory"):
        check_fits(6 * gib, "10 samples", available=4 * gib, shm=100 * gib)
    with pytest.raises(CacheError, match=r"/dev/shm has 1.00 GiB free"):
        check_fits(2 * gib, "10 samples", available=100 * gib, shm=1 * gib)
    with pytest.raises(CacheError, match=r"3 processes on this machine"):
        check_fits(20 * gib, "10 samples", processes=3, available=64 * gib, shm=64 * gib)
    check_fits(2 * gib, "10 samples", available=16 * gib, shm=8 * gib)


def test_train_py_refuses_a_cache_that_does_not_fit(tiny_cfg, monkeypatch):
    import data.cache
    monkeypatch.setattr(data.cache, "available_memory", lambda: 2 * 1024 ** 3)
    with pytest.raises(CacheError, match="DATALOADER.CACHE ram: 24 samples x 3 modalities x 64x32 needs"):
        build_dataloaders(tiny_cfg("DATALOADER.CACHE", "ram", "DATALOADER.NUM_WORKERS", "0"), verify=False)


def test_a_model_given_the_loaders_uint8_batch_says_how_to_prepare_it(tiny_cfg):
    from modeling import build_model
    train, test, _, ncls, ncam = build_dataloaders(tiny_cfg(), verify=False)
    batch = next(iter(test))
    model = build_model(tiny_cfg(), ncls, ncam, pretrained=False).eval()
    with pytest.raises(TypeError, match=r"uint8 images .*data.to_device\(loader, batch, modalities, device\)"):
        model({m: batch[m] for m in test.dataset.modalities}, cam_label=batch["camid"])
    images = test.dataset.to_device(batch, test.dataset.modalities, CPU)
    with torch.no_grad():
        assert model(images, cam_label=batch["camid"]).shape[0] == len(batch["pid"])
