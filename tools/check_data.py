"""Run the start-up data checks of train.py on a dataset and print what they found and how long they took:
the split summary, every image decoded once, and the evaluation protocol's valid queries.

    python tools/check_data.py --config_file configs/RGBNT201/Signal.yml [DATASETS.ROOT_DIR /data ...]

Useful before submitting a long job: a bad file is named here instead of in the job's log.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from config import load_config  # noqa: E402
from data.checks import count_valid_queries, verify_images  # noqa: E402
from data.datasets import DatasetError, build_dataset  # noqa: E402
from engine.setup import run_cli  # noqa: E402
from utils.logger import setup_logging  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", default="", help="YAML config naming the dataset")
    p.add_argument("opts", nargs="*", help="KEY VALUE config overrides")
    args = p.parse_intermixed_args()
    setup_logging()
    cfg = load_config(args.config_file, args.opts)
    start = time.perf_counter()
    dataset = build_dataset(cfg)
    parsed = time.perf_counter()
    print(dataset.summary())
    n = verify_images({"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}, dataset.tiled,
                      tile_order=dataset.tile_order)
    decoded = time.perf_counter()
    valid = count_valid_queries(dataset.query, dataset.gallery, dataset.uses_scenes)
    print(f"parsed the file names in {parsed - start:.2f} s; decoded {n} image files in {decoded - parsed:.2f} s "
          f"({n / max(decoded - parsed, 1e-9):.0f} files/s, {os.cpu_count()} CPUs)")
    print(f"{valid} of {len(dataset.query)} queries have a true match under the protocol")
    if valid == 0:
        raise DatasetError("no query has a true match in the gallery under the evaluation protocol")


if __name__ == "__main__":
    run_cli(main)
