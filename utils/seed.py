import os
import random

import numpy as np
import torch


def set_seed(seed, deterministic=False):
    """Seed Python, NumPy and torch; optionally force deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS reads this when its first handle is made (the first matmul), after this call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        # one input size per run (fixed crops): cuDNN's autotuner picks the fastest kernels once
        torch.backends.cudnn.benchmark = True
