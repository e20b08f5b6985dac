"""What a network costs where it is deployed: size, compute, latency and memory of one forward pass.

Measured on the network the user keeps (``Distiller.deployable()``), in eval mode, under
``torch.no_grad``:

- ``params``: number of parameters;
- ``file_bytes``: size of its state dict written as safetensors (serialised in memory);
- ``macs``: multiply-accumulates per sample, counted by ``torch.utils.flop_counter.FlopCounterMode``
  on a batch of one, MACs = FLOPs / 2. The counter covers matrix products and convolutions
  (and attention); element-wise operations, norms and activations are not counted;
- CPU latency at batch 1 and at a throughput batch (``throughput_batch``, default 256): wall
  time of whole forward passes, median and 90th percentile over ``repeats`` timed runs after
  warm-up (fewer, at least 5, for a network slower than 5 s per measurement; ``runs`` says how
  many), with ``threads`` intra-op threads (default 1; stated in the result);
- ``peak_bytes``: peak memory the forward pass of one batch-1 input allocates on top of what was
  allocated before it (weights and input excluded): a TorchDispatchMode sees every aten
  operator's outputs and counts each new tensor storage from its creation until the last tensor
  on it is released; the peak of that running sum. Scratch memory an operator frees before
  returning (e.g. a convolution's workspace) is not seen.
- on CUDA (only when a GPU is visible): the same latencies and ``torch.cuda.max_memory_allocated``
  above the pre-forward level, under autocast at the configured precision.
"""

from __future__ import annotations

import copy
import time

import torch

from joryu.data import TensorData
from joryu.data import example_batch as batch_of
from joryu.outputs import forward


def _as_batch(x, key) -> dict:
    return x if isinstance(x, dict) else {key: x}


def _rows(x) -> int:
    return len(next(v for v in x.values() if isinstance(v, torch.Tensor))) if isinstance(x, dict) else len(x)


def _repeat_to(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].cpu()


def example_batch(data, key, n: int):
    """``n`` real samples of ``data[key]`` (repeated when the data has fewer), prepared as the
    loaders prepare them; falls back to random normal inputs when ``data`` is a shape. For a model
    with several inputs (``key`` a list or mapping, or a key the data lacks because the model
    declares its own inputs), a batch dict of every tensor the data has."""
    if isinstance(data, (tuple, list)):
        return torch.randn(n, *data)
    has_key = isinstance(key, str) and (key in data.tensors if isinstance(data, TensorData) else key in data[0])
    if not has_key:
        b = batch_of(data, n)
        return {k: _repeat_to(v, n) for k, v in b.items() if isinstance(v, torch.Tensor)}
    if isinstance(data, TensorData):
        x = data.tensors[key][:n]
        x = data.prepare_input(x) if key in ("input", "input_b", "privileged") else x
    else:
        x = torch.stack([data[i][key] for i in range(min(n, len(data)))])
    reps = -(-n // len(x))
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n].cpu()


def state_dict_bytes(model: torch.nn.Module) -> int:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(state))


@torch.no_grad()
def count_macs(model: torch.nn.Module, x: torch.Tensor, key: str = "input") -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward(model, _as_batch(x, key), key)
    return int(counter.get_total_flops()) // (2 * _rows(x))


def _quantiles(times: list[float]) -> dict:
    s = sorted(times)
    return {"median_ms": 1000 * s[len(s) // 2], "p10_ms": 1000 * s[int(0.1 * len(s))],
            "p90_ms": 1000 * s[min(len(s) - 1, int(0.9 * len(s)))], "runs": len(s)}


@torch.no_grad()
def time_forward(model, x, key: str = "input", repeats: int = 30, warmup: int = 3, sync=None,
                 budget_s: float = 5.0, min_repeats: int = 5) -> dict:
    """Median and p90 wall time of ``repeats`` forward passes (fewer, but at least ``min_repeats``,
    when they would take more than ``budget_s``); ``runs`` says how many were timed."""
    batch = _as_batch(x, key)
    for _ in range(warmup):
        forward(model, batch, key)
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    for i in range(repeats):
        t = time.perf_counter()
        forward(model, batch, key)
        if sync:
            sync()
        times.append(time.perf_counter() - t)
        if i + 1 >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return _quantiles(times)


class _StorageCounter:
    """Live bytes of the tensor storages that operators create, and their peak: each new storage of
    an operator's output counts from its creation until the last tensor on it is released."""

    def __init__(self):
        self.live = self.peak = 0
        self.refs: dict[int, list] = {}  # storage pointer -> [bytes, tensors alive on it]

    def track(self, t: torch.Tensor) -> None:
        import weakref

        st = t.untyped_storage()
        ptr, nbytes = st.data_ptr(), st.nbytes()
        if ptr == 0 or nbytes == 0:
            return
        entry = self.refs.get(ptr)
        if entry is None:
            entry = self.refs[ptr] = [nbytes, 0]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self.refs[ptr]


def peak_bytes(fn, known=()) -> int:
    """Peak bytes of CPU tensor storage that ``fn()`` allocates, traced with a TorchDispatchMode
    over every aten operator (storages of the tensors in ``known`` do not count: they exist
    before). Works for a forward pass as for a whole training step (forward and backward)."""
    import gc

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    counter = _StorageCounter()
    skip = {t.untyped_storage().data_ptr() for t in known}

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu" \
                        and t.untyped_storage().data_ptr() not in skip:
                    counter.track(t)
            return out

    gc.collect()
    with Mode():
        out = fn()
    del out
    return int(counter.peak)


@torch.no_grad()
def peak_forward_bytes(model, x, key: str = "input") -> int:
    """Peak bytes of tensor storage one forward pass of ``x`` allocates (weights and input are not
    counted: they exist before it); see :func:`peak_bytes`."""
    batch = _as_batch(x, key)
    known = [t for t in batch.values() if isinstance(t, torch.Tensor)] + [*model.parameters(), *model.buffers()]
    return peak_bytes(lambda: forward(model, batch, key), known)


def _cuda_stats(model, x, key, precision: str, repeats: int, big: torch.Tensor) -> dict:  # pragma: no cover
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    m = copy.deepcopy(model).cuda().eval()
    sync = torch.cuda.synchronize

    def run(t):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            t = {k: v.cuda() for k, v in t.items()} if isinstance(t, dict) else t.cuda()
            return time_forward(m, t, key, repeats, sync=sync)

    out = {"device": torch.cuda.get_device_name(), "precision": precision, "batch1": run(x)}
    out["batch"] = run(big)
    out["batch"]["samples_per_s"] = _rows(big) / (out["batch"]["median_ms"] / 1000)
    xc = {k: v.cuda() for k, v in x.items()} if isinstance(x, dict) else x.cuda()
    sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
        forward(m, _as_batch(xc, key), key)
    sync()
    out["peak_bytes"] = int(torch.cuda.max_memory_allocated() - before)
    torch.cuda.empty_cache()
    return out


def deployment_stats(model: torch.nn.Module, data, key: str = "input", throughput_batch: int = 256,
                     repeats: int = 30, batch_repeats: int = 10, precision: str = "no",
                     cuda: bool | None = None, threads: int | None = 1) -> dict:
    """The numbers in the module docstring for ``model``; ``data`` gives real example inputs (a
    TensorData / Dataset, or an input shape for random normal inputs). CPU timings use ``threads``
    intra-op threads (default 1: one core, the usual small-device target, and stable on a busy
    machine; None: the process's current setting)."""
    m = copy.deepcopy(model).cpu().eval()
    x1 = example_batch(data, key, 1)
    xb = example_batch(data, key, throughput_batch)
    before = torch.get_num_threads()
    threads = threads or before
    out = {"params": sum(p.numel() for p in m.parameters()), "file_bytes": state_dict_bytes(m),
           "macs": count_macs(m, x1, key), "threads": threads,
           "throughput_batch": throughput_batch, "repeats": repeats, "batch_repeats": batch_repeats}
    torch.set_num_threads(threads)
    try:
        out["cpu_batch1"] = time_forward(m, x1, key, repeats)
        out["cpu_batch"] = time_forward(m, xb, key, batch_repeats, warmup=1, min_repeats=3)
    finally:
        torch.set_num_threads(before)
    out["cpu_batch"]["samples_per_s"] = throughput_batch / max(1e-12, out["cpu_batch"]["median_ms"] / 1000)
    out["peak_bytes"] = peak_forward_bytes(m, x1, key)
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:  # pragma: no cover - no GPU on the test machine
        out["cuda"] = _cuda_stats(m, x1, key, precision, repeats, xb)
    return out
