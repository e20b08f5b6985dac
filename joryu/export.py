"""``joryu export``: a trained network to a deployable file, with dynamic batch (and sequence) axes.

Formats:

- ``onnx`` (``.onnx``): torch.onnx's TorchScript-based exporter (``dynamo=False``: it needs no
  extra package), opset ``DEFAULT_OPSET``, output ``logits``. Inputs are named: ``input`` for a
  single-tensor model; for a model whose ``inputs`` name several tensors, the forward arguments
  (``input_ids``, ``attention_mask``, ...). Axis 0 of every input and of the logits is dynamic
  (``batch``); axis 1 of token inputs (integer ``[B, L]``) and of per-token logits is dynamic
  (``sequence``). Checked with ``onnx.checker.check_model`` and onnxruntime.
- ``torchscript`` (``.pt``): ``torch.jit.trace`` (load with ``torch.jit.load``).
- ``torch-export`` (``.pt2``): ``torch.export.export`` with the same dynamic axes (the sequence
  bounded by a HF config's ``max_position_embeddings`` / ``n_positions``), saved with
  ``torch.export.save`` (load with ``torch.export.load(path).module()``).
- ``hf``: a Hugging Face student as a ``save_pretrained`` folder (``save_hf_pretrained``).

Every file is checked against PyTorch on several batches (``check_batches``): the example with
another batch size, random inputs of two sizes, shorter sequences for token inputs and the
caller's own batches (``joryu export`` passes the test split's first samples). It passes when
``|exported - torch| <= atol + rtol * |torch|`` elementwise (``ATOL`` = 1e-4, ``RTOL`` = 1e-3) on
every batch. A trace that froze a data-dependent branch (a Python ``if`` on tensor values), or a
graph that fixed a size, fails a check and is refused in one line; nothing is written.

The exported graph returns the logits tensor: HF-style outputs, tuples and dicts are unwrapped by
``joryu.outputs.forward`` inside the exported wrapper.

An existing file is kept unless ``overwrite``; the file is written under a temporary name, checked,
and only then renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from joryu.errors import JoryuError
from joryu.outputs import forward, input_keys, inputs_of

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torch-export": ".pt2"}
DEFAULT_OPSET = 17
ATOL, RTOL = 1e-4, 1e-3


class ExportError(JoryuError):
    """A model that cannot be exported, or an export that does not match PyTorch."""

    exit_code = 2


class LogitsOnly(nn.Module):
    """``model`` called the way joryu calls it, returning the logits tensor only. Takes the
    model's input tensors positionally, in the order of its ``inputs`` (one ``input`` tensor for a
    plain model; ``input_ids, attention_mask`` for a model whose inputs name both)."""

    def __init__(self, model: nn.Module, input_key="input"):
        super().__init__()
        self.model = model
        self.spec = inputs_of(model, input_key)
        self.keys = input_keys(self.spec)

    def forward(self, *tensors):
        return forward(self.model, dict(zip(self.keys, tensors)), self.spec)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def input_names(wrapped: LogitsOnly) -> list[str]:
    """Names of the exported graph's inputs: the forward argument names of a keyword ``inputs``
    mapping (``input_ids``, ``attention_mask``...), else the batch keys."""
    return list(wrapped.spec) if isinstance(wrapped.spec, Mapping) else list(wrapped.keys)


def as_inputs(example, wrapped: LogitsOnly) -> tuple[Tensor, ...]:
    """A batch (a tensor, or a batch dict) as the wrapper's positional input tensors, on the CPU."""
    if isinstance(example, Tensor):
        if len(wrapped.keys) != 1:
            raise ExportError(f"{type(wrapped.model).__name__} reads {wrapped.keys}: give a batch dict with "
                              "those keys, not one tensor")
        return (example.cpu(),)
    missing = [k for k in wrapped.keys if k not in example]
    if missing:
        raise ExportError(f"the example batch has no {missing} (it has {sorted(example)}); the model's inputs "
                          f"are {wrapped.keys}")
    return tuple(example[k].cpu() for k in wrapped.keys)


def _is_tokens(t: Tensor) -> bool:
    """Token-like input ``[B, L]`` of integers (ids, masks, type ids): its axis 1 is the sequence."""
    return t.dim() == 2 and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def dynamic_axes_of(xs: tuple[Tensor, ...], logits: Tensor) -> tuple[list[dict[int, str]], dict[int, str]]:
    """Which axes are dynamic: axis 0 (``batch``) of every input and of the logits; axis 1
    (``sequence``) of token-like inputs, and of ``[B, L, C]`` logits when they have one per token."""
    seq = next((int(x.shape[1]) for x in xs if _is_tokens(x)), None)
    axes = [{0: "batch", 1: "sequence"} if _is_tokens(x) else {0: "batch"} for x in xs]
    out = {0: "batch"}
    if seq is not None and logits.dim() == 3 and logits.shape[1] == seq:
        out[1] = "sequence"
    return axes, out


def _resize(xs: tuple[Tensor, ...], rows: int, length: int | None) -> tuple[Tensor, ...]:
    """The batch repeated or cut to ``rows`` rows and its token inputs cut to ``length``."""
    out = []
    for x in xs:
        reps = -(-rows // len(x))
        x = x.repeat(reps, *([1] * (x.dim() - 1)))[:rows]
        if length is not None and _is_tokens(x):
            x = x[:, :length]
        out.append(x.contiguous())
    return tuple(out)


def _random_like(xs: tuple[Tensor, ...], rows: int, gen: torch.Generator) -> tuple[Tensor, ...]:
    """Random inputs of ``xs``' kind: Gaussian floats; integers drawn in each input's observed range
    (a 0/1 mask keeps its first position 1, so no row is all padding)."""
    out = []
    for x in xs:
        shape = (rows, *x.shape[1:])
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype))
            continue
        lo, hi = int(x.min()), int(x.max())
        r = torch.randint(lo, hi + 1, shape, generator=gen).to(x.dtype)
        if hi - lo <= 1 and r.dim() >= 2:
            r[:, 0] = hi
        out.append(r)
    return tuple(out)


def check_batches(xs: tuple[Tensor, ...], extra=(), seed: int = 0) -> list[tuple[str, tuple[Tensor, ...]]]:
    """The batches an export is checked on, each ``(what, tensors)``: the example with one more row
    (another batch size), random inputs of two sizes, for token inputs a shorter sequence, and
    ``extra`` (e.g. the test split's first batches)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(xs[0])
    seq = next((int(x.shape[1]) for x in xs if _is_tokens(x)), None)
    out = [(f"the example batch with {n + 1} rows", _resize(xs, n + 1, None)),
           ("random inputs, 1 row", _random_like(xs, 1, gen)),
           ("random inputs, 5 rows", _random_like(xs, 5, gen))]
    if seq is not None and seq > 1:
        short = max(1, seq - max(1, seq // 3))
        out.append((f"3 rows cut to {short} tokens", _resize(xs, 3, short)))
        out.append((f"random inputs, 4 rows of {short} tokens", _resize(_random_like(xs, 4, gen), 4, short)))
    out.extend(extra)
    return out


def _check(reference: nn.Module, run, xs: tuple[Tensor, ...], what: str, batch: str = "",
           traced_branch: bool = False) -> float:
    with torch.no_grad():
        want = reference(*xs).float()
    shapes = ", ".join(str(tuple(x.shape)) for x in xs)
    try:
        with torch.no_grad():
            got = torch.as_tensor(run(*xs)).float()
    except Exception as e:  # noqa: BLE001 - e.g. a graph specialised to the example's shapes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"the {what} export fails on {batch or 'a check batch'} (inputs {shapes}): {first}; "
                          "the format fixed a size the model needs free") from None
    if got.shape != want.shape:
        raise ExportError(f"the {what} export returns shape {tuple(got.shape)} on {batch or 'a check batch'} "
                          f"(inputs {shapes}), PyTorch {tuple(want.shape)}; the model may fix its batch size or "
                          "sequence length in forward")
    diff = (got - want).abs()
    both_nan = torch.isnan(got) & torch.isnan(want)
    ok = (diff <= ATOL + RTOL * want.abs()) | both_nan
    worst = float(diff[~both_nan].max()) if bool((~both_nan).any()) else 0.0
    if not bool(ok.all()):
        why = ("the model branches on tensor values (a Python `if` on a tensor), which the trace froze to the "
               "example's branch; write the branch with torch.where, or use --format torch-export, which "
               "captures it or refuses" if traced_branch else
               "the model may branch on its inputs' values or use an operator the format handles differently")
        raise ExportError(f"the {what} export differs from PyTorch by up to {worst:.3g} on {batch or 'a check batch'} "
                          f"(tolerance {ATOL} + {RTOL}*|x|): {why}; nothing was written")
    return worst


def _operator(msg: str) -> str | None:
    m = re.search(r"operator '([^']+)'", msg) or re.search(r"(aten[.:]{1,2}[A-Za-z0-9_.]+)", msg)
    return m.group(1) if m else None


def _export_onnx(wrapped, xs, tmp: Path, opset: int, names, axes, out_axes) -> bool:
    """Write the ONNX file; True when the trace froze a data-dependent branch (``_branch_warning``)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(wrapped, xs, str(tmp), input_names=names, output_names=["logits"],
                              dynamic_axes={**dict(zip(names, axes)), "logits": out_axes},
                              opset_version=opset, dynamo=False)
        return _branch_warning(caught)
    except Exception as e:  # noqa: BLE001 - any exporter failure becomes one line naming the operator
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        op = _operator(first)
        if op:
            raise ExportError(f"cannot export to ONNX: operator {op} has no ONNX translation at opset {opset} "
                              f"({first}); replace it in the model, or try --format torch-export") from None
        raise ExportError(f"cannot export to ONNX: {first}; try --format torch-export") from None


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({e.name} is not installed); "
                          "pip install 'joryu[onnx]' (or pip install onnx onnxruntime)") from None
    return onnx, onnxruntime


def _onnx_session(tmp: Path):
    onnx, ort = _onnx_modules()
    try:
        onnx.checker.check_model(str(tmp))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the ONNX file fails onnx.checker: {str(e).splitlines()[0]}") from None
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda *xs: sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0]


def _branch_warning(caught) -> bool:
    """A TracerWarning that a tensor became a Python bool: the trace froze a data-dependent branch."""
    return any(issubclass(w.category, torch.jit.TracerWarning) and "boolean" in str(w.message) for w in caught)


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 1:
            return v
    return None


def export_model(model: nn.Module, example, path: str | Path, fmt: str = "onnx", input_key="input",
                 overwrite: bool = False, opset: int = DEFAULT_OPSET, checks=()) -> dict:
    """Export ``model`` (eval mode, CPU) traced on ``example`` to ``path``; returns what was written
    and checked.

    ``example`` is a batch: one tensor for a single-input model, or a batch dict holding the keys
    the model's inputs name (``input_ids``, ``attention_mask``...): those become the graph's named
    inputs, with a dynamic batch axis and, for token inputs ``[B, L]``, a dynamic sequence axis.
    The file is checked against PyTorch on several batches (``check_batches``: other batch sizes,
    random inputs, shorter sequences, plus ``checks``, e.g. the test split's first batches) before
    it is renamed into place; a mismatch anywhere (a data-dependent branch a trace froze, a size the
    graph fixed) refuses the export in one line and writes nothing.
    ``fmt`` ``hf`` writes a ``save_pretrained`` folder instead (see ``save_hf_pretrained``)."""
    if fmt == "hf":
        return save_hf_pretrained(model, path, example, input_key, overwrite)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join([*FORMATS, 'hf'])}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it, or --out another path")
    model = model.cpu().eval()
    wrapped = LogitsOnly(model, input_key).eval()
    xs = as_inputs(example, wrapped)
    if len(xs[0]) < 2:
        xs = _resize(xs, 2, None)
    with torch.no_grad():
        logits = wrapped(*xs)
    axes, out_axes = dynamic_axes_of(xs, logits)
    names = input_names(wrapped)
    batches = check_batches(xs, [(f"the test split's first {len(b[0])} samples", b) for b in
                                 (as_inputs(c, wrapped) for c in checks)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    branch = False
    try:
        if fmt == "onnx":
            _onnx_modules()  # before any work: the checks need both packages
            branch = _export_onnx(wrapped, xs, tmp, opset, names, axes, out_axes)
            run = _onnx_session(tmp)
            what, checked = "ONNX (onnxruntime)", "onnx.checker + onnxruntime"
        elif fmt == "torchscript":
            try:
                with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    traced = torch.jit.trace(wrapped, xs, check_trace=False)
                torch.jit.save(traced, str(tmp))
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0]
                raise ExportError(f"cannot export to TorchScript: {first}; try --format onnx or torch-export") from None
            branch = _branch_warning(caught)
            loaded = torch.jit.load(str(tmp))
            run, what, checked = (lambda *a: loaded(*a).detach()), "TorchScript", "torch.jit.load"
        else:
            try:
                batch = torch.export.Dim("batch", min=1)
                top = _max_positions(model)
                seq = torch.export.Dim("sequence", min=1, max=top) if top else torch.export.Dim("sequence", min=1)
                shapes = tuple({a: (batch if name == "batch" else seq) for a, name in ax.items()} for ax in axes)
                with torch.no_grad():
                    prog = torch.export.export(wrapped, xs, dynamic_shapes=(shapes,))  # one *tensors argument
                torch.export.save(prog, str(tmp))
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0]
                op = _operator(first)
                hint = f" (operator {op})" if op else ""
                raise ExportError(f"cannot export with torch.export{hint}: {first}; try --format onnx "
                                  "(it is checked the same way)") from None
            loaded = torch.export.load(str(tmp)).module()
            run, what, checked = loaded, "torch.export", "torch.export.load"
        worst = 0.0
        with torch.no_grad():
            for label, b in batches:
                worst = max(worst, _check(wrapped, run, b, what, label, branch))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    shape = {n: [ax.get(i, int(x.shape[i])) for i in range(x.dim())] for n, x, ax in zip(names, xs, axes)}
    return {"path": str(path), "format": fmt, "bytes": path.stat().st_size, "checked_with": checked,
            "max_abs_diff": worst, "tolerance": f"atol {ATOL} + rtol {RTOL}",
            "input_names": names, "input_shape": shape[names[0]] if len(names) == 1 else shape,
            "check_batch": len(batches[0][1][0]), "check_batches": [label for label, _ in batches]}


def save_hf_pretrained(model: nn.Module, folder: str | Path, example=None, input_key="input",
                       overwrite: bool = False) -> dict:
    """Write a Hugging Face student as a ``save_pretrained`` folder (``config.json`` + safetensors
    weights) that ``from_pretrained`` loads, next to joryu's own state dict. The folder is written
    under a temporary name and loaded back with ``type(model).from_pretrained``; with ``example``
    (a batch), the reloaded model's logits must equal the model's, else nothing is kept."""
    folder = Path(folder)
    if not (hasattr(model, "save_pretrained") and hasattr(model, "config")):
        raise ExportError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained); save "
                          "joryu's state dict, or use --format onnx, torchscript or torch-export")
    if type(model).__module__.startswith("peft"):
        raise ExportError("a PEFT model's save_pretrained writes the adapters only; merge them first "
                          "(model = model.merge_and_unload()) to write the whole student")
    if folder.exists() and not overwrite:
        raise ExportError(f"{folder} exists; pass --overwrite to replace it, or --out another path")
    import shutil

    model = model.cpu().eval()
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        loaded = type(model).from_pretrained(str(tmp)).eval()
        worst = 0.0
        if example is not None:
            wrapped = LogitsOnly(model, input_key).eval()
            again = LogitsOnly(loaded, wrapped.spec).eval()
            worst = _check(wrapped, again, as_inputs(example, wrapped), "save_pretrained", "the example batch")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"path": str(folder), "format": "hf", "bytes": size, "files": sorted(f.name for f in folder.iterdir()),
            "checked_with": f"{type(model).__name__}.from_pretrained", "max_abs_diff": worst,
            "tolerance": f"atol {ATOL} + rtol {RTOL}"}
