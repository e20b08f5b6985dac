import os

import pytest
import torch

torch.set_num_threads(1)
torch.set_flush_denormal(True)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def tiny_data():
    """A small, learnable 3-class dataset of 8-dim inputs."""
    from joryu.data import TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 8, generator=g)
    w = torch.randn(8, 3, generator=g)
    y = (x @ w).argmax(1)
    return TensorData({"input": x, "target": y}, 3, "tiny")
