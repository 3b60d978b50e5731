"""Data: benchmark parsers, the synthetic benchmark, transforms, the P x K sampler and the loaders.

Batches are dicts: one uint8 image tensor [B, H, W, 3] per modality of the dataset (``RGB``, ``NI``, ``TI``
unless its spec declares others) plus ``pid``, ``camid``, ``sceneid`` and ``index`` (position of the sample in
its split, for looking up paths); training batches also hold ``erase`` (the random-erasing boxes) and ``seed``.
``to_device`` makes the model's float input of a batch.
"""
import logging
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from utils import comm

from .cache import build_cache
from .checks import check_queries, jpeg_decoder, read_image, read_pixels, verify_images
from .collate import SharedImageCollate
from .datasets import MODALITIES, DatasetError, build_dataset
from .datasets.bases import relabel
from .samplers import IdentitySampler
from .transforms import build_transforms, resize


class MultiModalImageDataset(Dataset):
    """The samples of a split, each a dict of uint8 images [H, W, 3] keyed by ``modalities`` (the dataset's, in
    batch order) as ``transform`` (``data.transforms.ImageTransform``) leaves them; a ``tiled`` file holds them
    side by side in ``tile_order`` (default: ``modalities``). ``jpeg``: the JPEG decoder (``jpeg_decoder``;
    None: PIL). ``cache``: the decoded images of every sample (``data.cache.build_cache``), read instead of the
    files. ``to_device`` turns a collated batch into the model's input."""

    def __init__(self, samples, transform, tiled=False, tile_order=None, modalities=MODALITIES, jpeg=None,
                 cache=None):
        self.samples = samples
        self.transform = transform
        self.tiled = tiled
        self.modalities = tuple(modalities)
        self.tile_order = tuple(tile_order or self.modalities)
        self.jpeg, self.cache = jpeg, cache

    def __len__(self):
        return len(self.samples)

    def read(self, index):
        """The sample's images as decoded, H x W x 3 uint8 arrays keyed by modality."""
        s = self.samples[index]
        if self.tiled:
            img = read_pixels(s.paths[0], self.jpeg)
            h, w = img.shape[:2]
            n = len(self.tile_order)
            if w % n:
                raise DatasetError(f"{s.paths[0]}: width {w} is not {n} side-by-side tiles "
                                   f"({' | '.join(self.tile_order)})")
            t = w // n
            tiles = {m: img[:, i * t:(i + 1) * t] for i, m in enumerate(self.tile_order)}
            return {m: tiles[m] for m in self.modalities}
        return {m: read_pixels(p, self.jpeg) for m, p in zip(self.modalities, s.paths)}

    def decode(self, index):
        """The sample's images at the input size (decoded and resized), keyed by modality."""
        return {m: resize(a, self.transform.size) for m, a in self.read(index).items()}

    def load(self, index):
        """``decode``, from the cache when there is one."""
        if self.cache is not None:
            return {m: self.cache[index, k] for k, m in enumerate(self.modalities)}
        return self.decode(index)

    def __getitem__(self, index):
        """``index``: a sample position, or ``(position, seed)`` from the training sampler, in which case
        the random augmentation is drawn from ``random.Random(seed)`` alone (the process's random state is
        untouched) and the item holds the seed (it seeds the batch's erasing noise on the device)."""
        seed = None
        if isinstance(index, (tuple, list)):
            index, seed = index
        s = self.samples[index]
        item = self.transform(self.load(index), None if seed is None else random.Random(seed))
        if seed is not None:
            item["seed"] = int(seed)
        item.update(pid=s.pid, camid=s.camid, sceneid=s.sceneid, index=index)
        return item

    def to_device(self, batch, modalities, device):
        """The model's input from a collated batch (``ImageTransform.to_device``)."""
        return self.transform.to_device(batch, modalities, device)


def source_dataset(loader_or_dataset):
    """The MultiModalImageDataset under a loader or dataset (through Subsets)."""
    ds = getattr(loader_or_dataset, "dataset", loader_or_dataset)
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def to_device(loader, batch, modalities, device):
    """The model's input from a batch of ``loader``: its dataset's ``to_device`` (normalisation, erasing)."""
    return source_dataset(loader).to_device(batch, modalities, device)


def stack_items(items):
    """Dataset items (dicts) as one batch, as the loader collates them."""
    return default_collate(list(items))


def _worker_kwargs(cfg):
    workers = cfg.DATALOADER.NUM_WORKERS
    return dict(num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def build_test_loader(cfg, query, gallery, gallery_is_query, tiled, tile_order=None, modalities=MODALITIES):
    """Loader over query (+ gallery unless the benchmark evaluates with gallery = query)."""
    samples = list(query) if gallery_is_query else list(query) + list(gallery)
    ids = {s.pid for s in query}
    if len(ids) == 1:
        logging.getLogger("signal.data").warning(
            "the evaluation split's queries hold one identity (%s): every true match outranks every other sample "
            "whatever the model, so mAP is 100%% every epoch and cannot choose an epoch", next(iter(ids)))
    ds = MultiModalImageDataset(samples, build_transforms(cfg, train=False), tiled, tile_order, modalities,
                                jpeg=choose_decoder(samples, tiled))
    # Its own generator: creating the loader's iterator then draws nothing from the global torch RNG, so an
    # evaluation leaves the training's random state as it was.
    return DataLoader(ds, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, generator=torch.Generator(),
                      collate_fn=SharedImageCollate(modalities), **_worker_kwargs(cfg))


def choose_decoder(samples, tiled):
    """The JPEG decoder of ``samples`` (``checks.jpeg_decoder``, checked on the first file of each modality)."""
    return jpeg_decoder(samples[0].paths[:1 if tiled else None]) if samples else None


def _verify(cfg, dataset, val=None, splits=("train", "query", "gallery")):
    scenes = dataset.uses_scenes
    check_queries(dataset.query, dataset.gallery, scenes, f"{dataset.name} test split")
    if val is not None:
        check_queries(val, val, scenes, "the validation split (DATASETS.VAL_IDS)")
    with comm.same_outcome():  # rank 0 decodes every file; a bad one stops every rank with its message
        if comm.is_main_process():
            n = verify_images({k: getattr(dataset, k) for k in splits}, dataset.tiled,
                              tile_order=dataset.tile_order)
            logging.getLogger("signal.data").info("Checked %d image files: all readable", n)


def build_test_dataloader(cfg, verify=True):
    """``(test_loader, num_query, dataset)`` from the query and gallery splits alone: the training split is
    neither parsed nor needed (evaluating a checkpoint, also on another benchmark)."""
    dataset = build_dataset(cfg, test_only=True)
    if verify:
        _verify(cfg, dataset, splits=("query", "gallery"))
    loader = build_test_loader(cfg, dataset.query, dataset.gallery, dataset.gallery_is_query, dataset.tiled,
                               dataset.tile_order, dataset.modalities)
    loader.reid_dataset = dataset
    return loader, len(dataset.query), dataset


def split_validation(train, val_ids, seed):
    """Hold out ``val_ids`` identities (a count, or a fraction when < 1) of the relabelled training samples.

    Returns (remaining training samples relabelled to 0..M-1, held-out samples). The held-out identities
    are drawn with ``seed`` from the sorted identity list.
    """
    pids = sorted({s.pid for s in train})
    n = int(round(val_ids * len(pids))) if val_ids < 1 else int(val_ids)
    if not 2 <= n <= len(pids) - 2:
        raise ValueError(f"DATASETS.VAL_IDS={val_ids} holds out {n} of {len(pids)} training identities; "
                         f"expected between 2 (with one, every epoch scores 100% mAP) and {len(pids) - 2}")
    rng = np.random.default_rng(seed)
    held = set(rng.choice(pids, size=n, replace=False).tolist())
    val = [s for s in train if s.pid in held]
    return relabel([s for s in train if s.pid not in held]), val


def build_dataloaders(cfg, verify=True):
    """Returns ``train_loader, test_loader, num_query, num_classes, num_cameras``.

    ``test_loader`` iterates the query samples first, then the gallery; when its dataset has exactly
    ``num_query`` samples the gallery is the query set itself (RGBNT201 protocol). With
    ``DATASETS.VAL_IDS`` the held-out identities are left out of training and ``train_loader.val_loader``
    (with ``train_loader.val_num_query``) evaluates on them.

    With ``verify`` every image of every split is decoded once and the evaluation protocol is checked to
    leave a valid query, so bad data stops the program here rather than at a later epoch.
    """
    dataset = build_dataset(cfg)
    val = None
    if cfg.DATASETS.VAL_IDS > 0:
        dataset.train, val = split_validation(dataset.train, cfg.DATASETS.VAL_IDS, cfg.SOLVER.SEED)
    if verify:
        _verify(cfg, dataset, val)
    world = comm.get_world_size()
    train_set = MultiModalImageDataset(dataset.train, build_transforms(cfg, train=True), dataset.tiled,
                                       dataset.tile_order, dataset.modalities,
                                       jpeg=choose_decoder(dataset.train, dataset.tiled))
    if cfg.DATALOADER.CACHE == "ram":
        train_set.cache = build_cache(train_set, max(1, cfg.DATALOADER.NUM_WORKERS))
    sampler = IdentitySampler([s.pid for s in dataset.train], cfg.SOLVER.IMS_PER_BATCH,
                              cfg.DATALOADER.NUM_INSTANCE, seed=cfg.SOLVER.SEED,
                              num_replicas=world, rank=comm.get_rank())
    generator = torch.Generator()
    generator.manual_seed(cfg.SOLVER.SEED + comm.get_rank())
    train_loader = DataLoader(train_set, batch_size=cfg.SOLVER.IMS_PER_BATCH // world, sampler=sampler,
                              drop_last=True, generator=generator, worker_init_fn=_seed_worker,
                              collate_fn=SharedImageCollate(dataset.modalities), **_worker_kwargs(cfg))
    test_loader = build_test_loader(cfg, dataset.query, dataset.gallery, dataset.gallery_is_query, dataset.tiled,
                                    dataset.tile_order, dataset.modalities)
    train_loader.reid_dataset = test_loader.reid_dataset = dataset
    train_loader.val_loader, train_loader.val_num_query = None, 0
    if val is not None:
        train_loader.val_loader = build_test_loader(cfg, val, val, True, dataset.tiled, dataset.tile_order,
                                                    dataset.modalities)
        train_loader.val_num_query = len(val)
    return train_loader, test_loader, len(dataset.query), dataset.num_train_pids, dataset.num_cameras


def _seed_worker(worker_id):
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


__all__ = ["build_dataloaders", "build_test_dataloader", "split_validation", "build_dataset", "build_test_loader",
           "DatasetError", "MODALITIES", "MultiModalImageDataset", "IdentitySampler", "read_image", "read_pixels",
           "source_dataset", "stack_items", "to_device"]
