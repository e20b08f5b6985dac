"""``joryu eval``: score a run folder's networks, or a model + weights, on any dataset joryu loads:
top-1, top-5, NLL, ECE (15 equal-width bins, reliability diagram PNG) and, given a teacher, top-1
agreement and mean KL(teacher || model) (``joryu.metrics``)."""

from __future__ import annotations

import json
from pathlib import Path

from joryu.atomic import atomic_write_text
from joryu.commands._fields import model_and_data_arguments
from joryu.data.sources import check_labels
from joryu.errors import ConfigError
from joryu.evaluate import evaluate_model
from joryu.metrics import ECE_BINS
from joryu.report.figures import reliability_diagram
from joryu.report.tables import format_results
from joryu.run.folder import (
    RunFolder,
    build_with_weights,
    load_data,
    parse_kv,
    positive_int,
    split_of,
)

HELP = "evaluate a run folder's networks, or a model + weights, on any dataset"


def configure(p) -> None:
    p.add_argument("target", nargs="?", help="a run folder (e.g. runs/kd-mnist1d)")
    model_and_data_arguments(p, "dataset name (default: the run's)")
    p.add_argument("--teacher", help="a teacher model for agreement and KL (zoo name or import path)")
    p.add_argument("--teacher-kwarg", action="append", metavar="K=V")
    p.add_argument("--teacher-weights")
    p.add_argument("--teacher-key", default="input")
    p.add_argument("--split", default="test", help="test (default), val or train")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="samples per batch (default 1000)")
    p.add_argument("--out", help="folder for eval.json and reliability.png (default: RUN/eval)")


def write_results(results: dict[str, dict], out_dir: str | Path, meta: dict) -> tuple[Path, Path]:
    """``eval.json`` and ``reliability.png`` in ``out_dir`` (both written atomically)."""
    out_dir = Path(out_dir)
    png = reliability_diagram(results, out_dir / "reliability.png")
    js = out_dir / "eval.json"
    atomic_write_text(js, json.dumps({**meta, "ece_bins": ECE_BINS, "results": results}, indent=1))
    return js, png  # png is None without matplotlib


def run(args) -> int:
    """``joryu eval``: see ``add_parsers``."""

    data_kwargs = parse_kv(args.data_kwarg)
    if args.target is not None:
        run = RunFolder(args.target, args.data, args.data_path, data_kwargs)
        bundle, models, cfg = run.bundle, dict(run.models), run.cfg
        out_dir = Path(args.out) if args.out else run.path / "eval"
    else:
        if not (args.model and args.weights and args.data):
            raise ConfigError("joryu eval needs a run folder, or --model NAME --weights FILE --data DATASET "
                              "(e.g. joryu eval --model mlp --model-kwarg hidden=[64,64] --weights "
                              "student.safetensors --data mnist1d)")
        bundle, cfg = load_data(args.data, args.data_path, data_kwargs), None
        models = {"model": (build_with_weights(args.model, args.weights, parse_kv(args.model_kwarg), bundle,
                                               f"model {args.model!r}", args.input_key), args.input_key)}
        if args.teacher:
            models = {"teacher": (build_with_weights(args.teacher, args.teacher_weights, parse_kv(args.teacher_kwarg),
                                                     bundle, f"teacher {args.teacher!r}", args.teacher_key),
                                  args.teacher_key), **models}
        out_dir = Path(args.out) if args.out else Path("eval") / Path(args.weights).stem
    data = split_of(bundle, args.split, cfg)
    check_labels(data, bundle.num_classes, f"--split {args.split}")
    teacher = models.get("teacher")
    results = {}
    for name, (model, key) in models.items():
        t = teacher if name != "teacher" else None
        results[name] = evaluate_model(model, data, key, t[0] if t else None, t[1] if t else "input",
                                       args.batch_size)
    js, png = write_results(results, out_dir, {"data": bundle.name, "split": args.split,
                                               "target": str(args.target or args.weights)})
    print(f"{bundle.name} {args.split} split, {results[next(iter(results))]['n']} scored predictions"
          + (" (agreement and KL against the teacher)" if teacher else ""))
    print(format_results(results))
    print(f"\nwrote {js}" + (f" and {png}" if png is not None else ""))
    return 0
