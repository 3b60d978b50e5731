"""P x K identity sampler: each batch holds P identities with K instances each.

One shared-seed stream of batches is drawn per epoch (seed + epoch); with ``num_replicas`` > 1 each
rank takes its own slice of identities from every global batch, so ranks see disjoint samples.

The sampler yields ``(index, augmentation seed)`` pairs: every position of an epoch gets its own seed,
drawn from (seed, epoch), and the dataset seeds the random augmentation of that sample with it. The
augmentation is therefore a function of the run's seed, the epoch and the position alone: it does not
depend on DATALOADER.NUM_WORKERS, on which worker loads the sample, or on whether the run was resumed.
"""
import numpy as np
from torch.utils.data import Sampler


class IdentitySampler(Sampler):
    def __init__(self, pids, batch_size, num_instances, seed=0, num_replicas=1, rank=0):
        if batch_size % num_instances:
            raise ValueError(f"batch size {batch_size} must be a multiple of num_instances {num_instances}")
        self.pids = np.asarray(pids)
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if self.num_pids_per_batch % num_replicas:
            raise ValueError(f"identities per batch ({self.num_pids_per_batch}) must divide among "
                             f"{num_replicas} processes")
        self.index_dic = {}
        for idx, pid in enumerate(self.pids.tolist()):
            self.index_dic.setdefault(pid, []).append(idx)
        self.unique_pids = sorted(self.index_dic)
        if len(self.unique_pids) < self.num_pids_per_batch:
            raise ValueError(f"a batch needs {self.num_pids_per_batch} identities but the training set has "
                             f"only {len(self.unique_pids)}; lower SOLVER.IMS_PER_BATCH")
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.batch_size = batch_size
        self.set_epoch(0)

    def set_epoch(self, epoch, start=0):
        """Draw the epoch's batches; ``len()`` is then this epoch's exact number of samples (P x K epochs
        differ in length). ``start``: the number of (global) batches already trained in this epoch, left out
        (a run resumed mid-epoch); the remaining batches and their augmentation seeds are unchanged."""
        self.epoch = epoch
        self._batches = self._global_batches()
        if not 0 <= start <= len(self._batches):
            raise ValueError(f"epoch {epoch} has {len(self._batches)} batches, cannot start after batch {start}")
        self.start = start
        self._length = (len(self._batches) - start) * self.batch_size // self.num_replicas

    def _global_batches(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        chunks = {}
        for pid in self.unique_pids:
            idxs = np.array(self.index_dic[pid])
            if len(idxs) < self.num_instances:
                idxs = rng.choice(idxs, size=self.num_instances, replace=True)
            idxs = rng.permutation(idxs)
            n = len(idxs) // self.num_instances
            chunks[pid] = [idxs[i * self.num_instances:(i + 1) * self.num_instances].tolist() for i in range(n)]
        avail = [pid for pid in self.unique_pids if chunks[pid]]
        batches = []
        while len(avail) >= self.num_pids_per_batch:
            chosen = rng.choice(len(avail), size=self.num_pids_per_batch, replace=False)
            batch = [chunks[avail[c]].pop(0) for c in chosen]
            batches.append(batch)
            avail = [pid for pid in avail if chunks[pid]]
        return batches

    def __iter__(self):
        per_rank = self.num_pids_per_batch // self.num_replicas
        batches = self._batches
        seeds = np.random.default_rng([self.seed, self.epoch, 1]).integers(
            0, 2 ** 63, size=(len(batches), self.num_pids_per_batch, self.num_instances))
        for batch, batch_seeds in zip(batches[self.start:], seeds[self.start:]):
            lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
            for group, group_seeds in zip(batch[lo:hi], batch_seeds[lo:hi]):
                yield from zip(group, group_seeds.tolist())

    def __len__(self):
        return self._length
