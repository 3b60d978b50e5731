"""Run train.py's main() under torchrun, recording which training samples this rank loaded and saving
this rank's final weights (used by tests/test_distributed.py)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import data  # noqa: E402
import train  # noqa: E402


def main():
    record_dir = os.environ["SIGNAL_TEST_RECORD_DIR"]
    rank = int(os.environ.get("RANK", "0"))
    seen = []
    original_getitem = data.MultiModalImageDataset.__getitem__

    def getitem(self, index):
        if getattr(self, "is_train", False):
            seen.append(int(index[0]))        # (position, augmentation seed) from the training sampler
        return original_getitem(self, index)

    original_build = data.build_dataloaders

    def build(cfg, **kwargs):
        loaders = original_build(cfg, **kwargs)
        loaders[0].dataset.is_train = True
        return loaders

    original_train = train.Trainer.train

    def train_and_record(self):
        out = original_train(self)
        torch.save(self.unwrapped.state_dict(), os.path.join(record_dir, f"rank{rank}.pt"))
        return out

    data.MultiModalImageDataset.__getitem__ = getitem
    train.build_dataloaders = build
    train.Trainer.train = train_and_record
    sys.argv = ["train.py"] + sys.argv[1:]
    train.main()
    with open(os.path.join(record_dir, f"seen{rank}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
