"""``joryu export``: a trained network to a deployable file, with a dynamic batch size.

Formats:

- ``onnx`` (``.onnx``): torch.onnx's TorchScript-based exporter (``dynamo=False``: it needs no
  extra package), opset ``DEFAULT_OPSET``, input ``input`` and output ``logits`` with a dynamic
  first axis. Checked with ``onnx.checker.check_model`` and run once through onnxruntime on a
  batch of a *different* size than the export example; passes when
  ``|ort - torch| <= atol + rtol * |torch|`` elementwise (``ATOL`` = 1e-4, ``RTOL`` = 1e-3).
- ``torchscript`` (``.pt``): ``torch.jit.trace`` (load with ``torch.jit.load``), checked the same way.
- ``torch-export`` (``.pt2``): ``torch.export.export`` with a dynamic batch dimension, saved with
  ``torch.export.save`` (load with ``torch.export.load(path).module()``), checked the same way.

The exported graph returns the logits tensor: HF-style outputs, tuples and dicts are unwrapped by
``joryu.outputs.forward`` inside the exported wrapper. Single-tensor inputs only.

An existing file is kept unless ``overwrite``; the file is written under a temporary name, checked,
and only then renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from joryu.errors import JoryuError
from joryu.outputs import forward

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "torch-export": ".pt2"}
DEFAULT_OPSET = 17
ATOL, RTOL = 1e-4, 1e-3


class ExportError(JoryuError):
    """A model that cannot be exported, or an export that does not match PyTorch."""

    exit_code = 2


class LogitsOnly(nn.Module):
    """``model`` called the way joryu calls it, returning the logits tensor only."""

    def __init__(self, model: nn.Module, input_key: str = "input"):
        super().__init__()
        self.model = model
        self.input_key = input_key

    def forward(self, x):
        return forward(self.model, {self.input_key: x}, self.input_key)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _check(reference: nn.Module, run, x: torch.Tensor, what: str) -> float:
    with torch.no_grad():
        want = reference(x).float()
    got = torch.as_tensor(run(x)).float()
    if got.shape != want.shape:
        raise ExportError(f"the {what} export returns shape {tuple(got.shape)} for a batch of {len(x)}, "
                          f"PyTorch {tuple(want.shape)}; the model may fix its batch size in forward")
    diff = (got - want).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not bool((diff <= ATOL + RTOL * want.abs()).all()):
        raise ExportError(f"the {what} export differs from PyTorch by up to {worst:.3g} (tolerance "
                          f"{ATOL} + {RTOL}*|x|); the model may use an operator the format handles differently")
    return worst


def _operator(msg: str) -> str | None:
    m = re.search(r"operator '([^']+)'", msg) or re.search(r"(aten[.:]{1,2}[A-Za-z0-9_.]+)", msg)
    return m.group(1) if m else None


def _export_onnx(wrapped, example, tmp: Path, opset: int) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
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


def _validate_onnx(wrapped, tmp: Path, check_x) -> float:
    onnx, ort = _onnx_modules()

    try:
        onnx.checker.check_model(str(tmp))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the ONNX file fails onnx.checker: {str(e).splitlines()[0]}") from None
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return _check(wrapped, lambda x: sess.run(None, {name: x.numpy()})[0], check_x, "ONNX (onnxruntime)")


def export_model(model: nn.Module, example: torch.Tensor, path: str | Path, fmt: str = "onnx",
                 input_key: str = "input", overwrite: bool = False, opset: int = DEFAULT_OPSET) -> dict:
    """Export ``model`` (eval mode, CPU) traced on ``example`` (a batch, >= 2 rows) to ``path``;
    returns what was written and checked."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists; pass --overwrite to replace it, or --out another path")
    if len(example) < 2:
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    model = model.cpu().eval()
    wrapped = LogitsOnly(model, input_key).eval()
    example = example.cpu()
    check_x = torch.cat([example, example[:1]])  # another batch size than the traced one
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        if fmt == "onnx":
            _onnx_modules()  # before any work: the checks need both packages
            _export_onnx(wrapped, example, tmp, opset)
            worst = _validate_onnx(wrapped, tmp, check_x)
            checked = "onnx.checker + onnxruntime"
        elif fmt == "torchscript":
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(wrapped, example, check_trace=False)
                torch.jit.save(traced, str(tmp))
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0]
                raise ExportError(f"cannot export to TorchScript: {first}; try --format onnx or torch-export") from None
            loaded = torch.jit.load(str(tmp))
            worst = _check(wrapped, lambda x: loaded(x).detach(), check_x, "TorchScript")
            checked = "torch.jit.load"
        else:
            try:
                batch = torch.export.Dim("batch", min=1)
                with torch.no_grad():
                    prog = torch.export.export(wrapped, (example,), dynamic_shapes=({0: batch},))
                torch.export.save(prog, str(tmp))
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0]
                op = _operator(first)
                hint = f" (operator {op})" if op else ""
                raise ExportError(f"cannot export with torch.export{hint}: {first}; try --format onnx") from None
            loaded = torch.export.load(str(tmp)).module()
            with torch.no_grad():
                worst = _check(wrapped, lambda x: loaded(x), check_x, "torch.export")
            checked = "torch.export.load"
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(path), "format": fmt, "bytes": path.stat().st_size, "checked_with": checked,
            "max_abs_diff": worst, "tolerance": f"atol {ATOL} + rtol {RTOL}",
            "input_shape": ["batch", *example.shape[1:]], "check_batch": len(check_x)}
