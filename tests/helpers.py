"""Helpers shared by the test files."""
import contextlib
import glob
import logging
import os
import re

import pytest

from utils.versions import torch_version

# Long runs whose subject does not depend on the torch version (tools, worked examples): checked on the
# newest stack only, to keep the oldest stack's suite short.
newest_stack_only = pytest.mark.skipif(torch_version() < (2, 3), reason="checked on the newest torch stack")


def result_file(out, prefix):
    """The one test.py result ``<prefix>_<evaluation hash>.json`` in ``out`` (``prefix`` like
    ``test_best_Synthetic``); fails when there is none or more than one."""
    pattern = re.compile(re.escape(prefix) + r"_[0-9a-f]{8}\.json$")
    found = [p for p in glob.glob(os.path.join(out, prefix + "_*.json")) if pattern.search(os.path.basename(p))]
    assert len(found) == 1, f"expected one {prefix}_<hash>.json in {out}, found {sorted(os.listdir(out))}"
    return found[0]


@contextlib.contextmanager
def log_records(name):
    """The list of records logged to logger ``name`` inside the block (the logger's own level applies)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(name).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(name).removeHandler(handler)
