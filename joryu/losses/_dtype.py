"""The dtype a loss computes in: the caller's (float64 stays float64), at least float32."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The promoted floating dtype of ``tensors``, raised to float32 for half precision."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if not dtype.is_floating_point or dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype
