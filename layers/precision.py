"""Parts of the loss computed in fp32 whatever the surrounding autocast (mixed-precision training)."""
import torch


def fp32(device):
    """A context in which autocast is off on ``device``'s type: tensors made ``.float()`` stay fp32 through
    matmuls (under CUDA fp16 autocast a matmul of fp32 inputs would otherwise run in fp16)."""
    return torch.autocast(torch.device(device).type, enabled=False)
