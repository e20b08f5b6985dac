"""``joryu export``: a run's student (or a model + weights) as ONNX, TorchScript, torch.export or a
Hugging Face ``save_pretrained`` folder, checked against PyTorch on several batches (``joryu.export``)."""

from __future__ import annotations

from pathlib import Path

from joryu.commands._fields import model_and_data_arguments
from joryu.config import ModelConfig
from joryu.errors import ConfigError
from joryu.export import DEFAULT_OPSET, FORMATS, ExportError, export_model
from joryu.models.build import build_model
from joryu.report.deploy import example_batch
from joryu.run.folder import RunFolder, build_with_weights, load_data, parse_kv, parse_shape

HELP = "export a run's student (or a model + weights) to ONNX, TorchScript, torch.export or hf"


def configure(p) -> None:
    p.add_argument("target", nargs="?", help="a run folder (e.g. runs/kd-mnist1d): exports its student")
    p.add_argument("--format", default="onnx", help="onnx (default), torchscript, torch-export, or hf (a "
                                                    "Hugging Face student as a save_pretrained folder)")
    p.add_argument("--out", help="output file (default: RUN/student.onnx, .pt, .pt2 or RUN/student-hf/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    model_and_data_arguments(p, "dataset whose test inputs trace and check the export")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,40 (instead of --data)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")


def run(args) -> int:
    if args.format not in (*FORMATS, "hf"):
        raise ExportError(f"unknown export format {args.format!r}; choose one of {', '.join([*FORMATS, 'hf'])}")
    suffix = FORMATS.get(args.format, "-hf")  # hf: a save_pretrained folder
    if args.target is not None:
        if args.out and Path(args.out).exists() and not args.overwrite:  # before loading anything
            raise ExportError(f"{args.out} exists; pass --overwrite to replace it, or --out another path")
        run = RunFolder(args.target)
        model, key = run.student
        data = run.bundle.test
        out = Path(args.out) if args.out else run.path / f"student{suffix}"
    else:
        if not (args.model and args.weights and (args.data or args.input_shape)):
            raise ConfigError("joryu export needs a run folder, or --model NAME --weights FILE and --data DATASET "
                              "or --input-shape C,L (e.g. joryu export --model mlp --model-kwarg hidden=[64,64] "
                              "--weights student.safetensors --data mnist1d)")
        key = args.input_key
        if args.data:
            bundle = load_data(args.data, args.data_path, parse_kv(args.data_kwarg))
            model = build_with_weights(args.model, args.weights, parse_kv(args.model_kwarg), bundle,
                                       f"model {args.model!r}", key)
            data = bundle.test
        else:
            shape = parse_shape(args.input_shape)
            kwargs = parse_kv(args.model_kwarg)
            model = build_model(ModelConfig(name=args.model, kwargs=kwargs, checkpoint=args.weights),
                                int(kwargs.get("num_classes", 10)), shape).eval()
            data = shape
        w = Path(args.weights)
        out = Path(args.out) if args.out else w.with_name(w.stem + suffix) if suffix == "-hf" else w.with_suffix(suffix)
    example = example_batch(data, key, 2)
    checks = [] if isinstance(data, (tuple, list)) else [example_batch(data, key, n) for n in (3, 8)]
    info = export_model(model, example, out, args.format, key, args.overwrite, args.opset, checks)
    if args.format == "hf":
        print(f"wrote {info['path']}/ ({info['bytes'] / 1024:.1f} KiB: {', '.join(info['files'])}); "
              f"loads back with {info['checked_with']}, max |difference| {info['max_abs_diff']:.2e}")
        return 0
    print(f"wrote {info['path']} ({info['bytes'] / 1024:.1f} KiB, {args.format}, input {info['input_shape']}, "
          "dynamic axes)")
    print(f"checked with {info['checked_with']} on {len(info['check_batches'])} batches: max |difference| from "
          f"PyTorch {info['max_abs_diff']:.2e} (tolerance {info['tolerance']})")
    return 0
