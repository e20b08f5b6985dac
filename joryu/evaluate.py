"""``joryu eval``: what distillation users look at, for any model on any dataset joryu loads.

Per prediction (a row of flattened ``[N, C]`` logits with a validity mask, so ``[B, C]``,
``[B, L, C]`` and ``[B, C, H, W]`` outputs all reduce to it; targets of -100 and rows with
``labeled`` False are not scored):

- top-1 and top-5 accuracy (%); top-k with k = min(5, C) (per position: token or pixel accuracy);
- the metric of the output shape: perplexity exp(NLL) for ``[B, L, C]``; mean IoU (%) over the
  classes present in the targets or predictions for ``[B, C, H, W]``;
- NLL: mean cross-entropy with the labels (nats);
- ECE, expected calibration error (%): confidence c = max softmax, 15 equal-width bins on
  [0, 1], ECE = sum_b (n_b / N) |acc_b - conf_b| (Guo et al. 2017); with the per-bin
  accuracy, confidence and count behind the reliability diagram;
- given a teacher (Stanton et al. 2021, "Does knowledge distillation really work?", fidelity):
  top-1 agreement (%) = mean[argmax s = argmax t] and mean KL(p_t || p_s) at temperature 1
  (nats), over the same rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from joryu.outputs import forward

ECE_BINS = 15


def flatten_positions(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None):
    """(logits [N, C], target [N], valid [N]) from [B, C], [B, L, C] or [B, C, H, W] outputs."""
    if logits.dim() == 4:  # [B, C, H, W] -> [B*H*W, C]
        logits = logits.permute(0, 2, 3, 1)
    if logits.dim() >= 3 and target.dim() == logits.dim() - 1 and valid is not None and valid.dim() == 1:
        valid = valid.view(-1, *([1] * (target.dim() - 1))).expand_as(target)  # per-sample mask
    c = logits.shape[-1]
    logits = logits.reshape(-1, c)
    target = target.reshape(-1)
    ok = target != -100
    if valid is not None:
        ok = ok & valid.reshape(-1).bool()
    return logits, target, ok


class Scores:
    """Streaming accumulator of the metrics above; ``update`` per batch, ``compute`` at the end."""

    def __init__(self, num_bins: int = ECE_BINS):
        self.num_bins = num_bins
        self.n = 0
        self.top1 = self.top5 = 0.0
        self.nll = 0.0
        self.k = 5
        self.bin_count = torch.zeros(num_bins, dtype=torch.float64)
        self.bin_conf = torch.zeros(num_bins, dtype=torch.float64)
        self.bin_correct = torch.zeros(num_bins, dtype=torch.float64)
        self.t_n = 0
        self.agree = 0.0
        self.kl = 0.0
        self.kind = None  # "classification" [B, C], "sequence" [B, L, C] or "dense" [B, C, H, W]
        self.confusion = None  # dense outputs: [C, C] counts (target, prediction) for the mIoU

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> None:
        if self.kind is None:
            self.kind = {2: "classification", 3: "sequence", 4: "dense"}.get(logits.dim(), "classification")
        logits, target, ok = flatten_positions(logits, target, valid)
        if teacher_logits is not None:
            teacher_logits = flatten_positions(teacher_logits, torch.zeros_like(target))[0]
            teacher_logits = teacher_logits[ok].double()
        logits, target = logits[ok].double(), target[ok]
        if len(target) == 0:
            return
        self.k = min(5, logits.shape[-1])
        logp = F.log_softmax(logits, -1)
        conf, pred = logp.exp().max(-1)
        correct = (pred == target).double()
        self.n += len(target)
        self.top1 += float(correct.sum())
        topk = logits.topk(self.k, -1).indices
        self.top5 += float((topk == target[:, None]).any(-1).sum())
        self.nll += float(F.nll_loss(logp, target, reduction="sum"))
        b = torch.clamp((conf * self.num_bins).long(), max=self.num_bins - 1).cpu()  # bin (i/B, (i+1)/B]
        self.bin_count += torch.bincount(b, minlength=self.num_bins).double()
        self.bin_conf += torch.bincount(b, weights=conf.cpu(), minlength=self.num_bins)
        self.bin_correct += torch.bincount(b, weights=correct.cpu(), minlength=self.num_bins)
        if self.kind == "dense":
            c = logits.shape[-1]
            if self.confusion is None:
                self.confusion = torch.zeros(c, c, dtype=torch.float64)
            self.confusion += torch.bincount((target * c + pred).cpu(), minlength=c * c).double().view(c, c)
        if teacher_logits is not None:
            logq = F.log_softmax(teacher_logits, -1)
            self.t_n += len(target)
            self.agree += float((logq.argmax(-1) == pred).sum())
            self.kl += float((logq.exp() * (logq - logp)).sum())

    def compute(self) -> dict:
        n = max(1, self.n)
        out = {"n": self.n, "top1": 100.0 * self.top1 / n, f"top{self.k}": 100.0 * self.top5 / n,
               "nll": self.nll / n}
        if self.k != 5:
            out["top5"] = out[f"top{self.k}"]
        cnt = self.bin_count
        nonzero = cnt > 0
        acc = torch.where(nonzero, self.bin_correct / cnt.clamp_min(1), torch.zeros_like(cnt))
        conf = torch.where(nonzero, self.bin_conf / cnt.clamp_min(1), torch.zeros_like(cnt))
        out["ece"] = 100.0 * float(((cnt / n) * (acc - conf).abs()).sum())
        out["ece_bins"] = self.num_bins
        out["reliability"] = {"count": cnt.long().tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()}
        out["kind"] = self.kind or "classification"
        if self.kind == "sequence":
            out["perplexity"] = math.exp(min(out["nll"], 700.0))
        if self.confusion is not None:  # mean IoU over the classes that occur (in target or prediction)
            inter = self.confusion.diag()
            union = self.confusion.sum(0) + self.confusion.sum(1) - inter
            seen = union > 0
            out["miou"] = 100.0 * float((inter[seen] / union[seen]).mean()) if bool(seen.any()) else 0.0
        if self.t_n:
            out["agreement"] = 100.0 * self.agree / self.t_n
            out["kl_teacher"] = self.kl / self.t_n
        return out


def _loader(data, batch_size: int, device):
    from joryu.data.sources import make_loader

    return make_loader(data, batch_size, shuffle=False, device=device)


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data, input_key="input", teacher: torch.nn.Module | None = None,
                   teacher_key="input", batch_size: int = 1000, device: str | torch.device = "cpu",
                   num_bins: int = ECE_BINS) -> dict:
    """top-1/top-5, NLL, ECE (+ reliability bins) and, with ``teacher``, agreement and KL(t || s)."""
    device = torch.device(device)
    was = model.training
    model.to(device).eval()
    t_was = teacher.training if teacher is not None else None
    if teacher is not None:
        teacher.to(device).eval()
    scores = Scores(num_bins)
    for batch in _loader(data, batch_size, device).iterate(0):
        logits = forward(model, batch, input_key).float()
        t_logits = forward(teacher, batch, teacher_key).float() if teacher is not None else None
        scores.update(logits, batch["target"], t_logits, batch.get("labeled"))
    model.train(was)
    if teacher is not None:
        teacher.train(t_was)
    return scores.compute()


def reliability_diagram(results: dict[str, dict], path: str | Path) -> Path:
    """One panel per model: accuracy against confidence per bin, the gap shaded, ECE in the title
    (None, with a one-line notice, when matplotlib is not installed)."""
    plt = pyplot("the reliability diagram")
    if plt is None:
        return None
    path = Path(path)
    k = len(results)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.6), dpi=100, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        bins = r["ece_bins"]
        edges = [i / bins for i in range(bins)]
        rel = r["reliability"]
        ax.bar(edges, rel["accuracy"], width=1 / bins, align="edge", edgecolor="k", lw=0.5,
               label="accuracy")
        gaps = [abs(c - a) if n else 0 for a, c, n in zip(rel["accuracy"], rel["confidence"], rel["count"])]
        low = [min(a, c) for a, c in zip(rel["accuracy"], rel["confidence"])]
        ax.bar(edges, gaps, bottom=low, width=1 / bins, align="edge", color="tab:red", alpha=0.35,
               label="|accuracy - confidence|")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (max softmax)")
        ax.set_ylabel("accuracy in bin")
        ax.set_title(f"{name}\nECE {r['ece']:.2f}% ({bins} bins)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
    return path


_SAID = set()


def pyplot(purpose: str):
    """matplotlib.pyplot (Agg backend), or None when it is not installed, saying so once per
    process in one line on stderr."""
    try:
        import matplotlib
    except ImportError:
        import sys

        if "matplotlib" not in _SAID:
            _SAID.add("matplotlib")
            print(f"joryu: figures skipped ({purpose} and any other): they need matplotlib, which is not "
                  "installed; pip install 'joryu[plot]' (or pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> None:
    """Write a figure atomically (a temporary file, then rename)."""
    from joryu.rundir import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")


def format_results(results: dict[str, dict]) -> str:
    """A console table of evaluation results, one row per model."""
    from joryu.report.tables import format_table

    has_t = any("agreement" in r for r in results.values())
    extra = [k for k in ("perplexity", "miou") if any(k in r for r in results.values())]
    head = ["model", "n", "top-1 (%)", "top-5 (%)", "NLL", f"ECE (%, {ECE_BINS} bins)"]
    head += [{"perplexity": "perplexity", "miou": "mIoU (%)"}[k] for k in extra]
    if has_t:
        head += ["agreement (%)", "KL(teacher ‖ model)"]
    table = [head]
    for name, r in results.items():
        row = [name, str(r["n"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['nll']:.4f}", f"{r['ece']:.2f}"]
        row += [f"{r[k]:.2f}" if k in r else "-" for k in extra]
        if has_t:
            row += [f"{r['agreement']:.2f}" if "agreement" in r else "-",
                    f"{r['kl_teacher']:.4f}" if "kl_teacher" in r else "-"]
        table.append(row)
    return format_table(table)


def write_results(results: dict[str, dict], out_dir: str | Path, meta: dict) -> tuple[Path, Path]:
    """``eval.json`` and ``reliability.png`` in ``out_dir`` (both written atomically)."""
    out_dir = Path(out_dir)
    png = reliability_diagram(results, out_dir / "reliability.png")
    js = out_dir / "eval.json"
    from joryu.rundir import atomic_write_text

    atomic_write_text(js, json.dumps({**meta, "ece_bins": ECE_BINS, "results": results}, indent=1))
    return js, png  # png is None without matplotlib


# ---------------------------------------------------------------------------------------- loading
def _kv(items) -> dict:
    from joryu.config import parse_value
    from joryu.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{item!r} must look like key=value (e.g. hidden=[64,64])")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def load_data(name: str, path: str | None = None, kwargs: dict | None = None):
    from joryu.data import load

    return load(name, path, **(kwargs or {}))


def split_of(bundle, split: str, cfg=None):
    """The ``test`` split, or ``train`` / ``val`` carved as the run carved them."""
    from joryu.data import TensorData, split_validation
    from joryu.errors import ConfigError

    if split == "test":
        return bundle.test
    if split not in ("train", "val"):
        raise ConfigError(f"--split must be test, val or train, not {split!r}")
    if not isinstance(bundle.train, TensorData):
        return bundle.train
    fraction = cfg.data.val_fraction if cfg is not None else 0.1
    seed = cfg.data.split_seed if cfg is not None else 0
    train, val = split_validation(bundle.train, fraction, seed)
    if split == "val" and val is None:
        raise ConfigError("--split val: the run used no validation split (data.val_fraction = 0)")
    return train if split == "train" else val


def build_with_weights(name: str, weights, kwargs: dict, bundle, what: str, input_key: str = "input"):
    """A zoo / import-path model with ``weights`` loaded (see joryu.weights for the layouts)."""
    from joryu.config import ModelConfig
    from joryu.experiment import build_model, input_shape_of

    cfg = ModelConfig(name=name, kwargs=kwargs or {}, checkpoint=str(weights) if weights else None)
    model = build_model(cfg, bundle.num_classes, input_shape_of(bundle.test, input_key, bundle.input_shape))
    return check_fits(model, bundle, what, input_key)


def check_fits(model, bundle, what: str, input_key: str = "input"):
    """``model`` reads the data's inputs and predicts its number of classes, else one ConfigError line."""
    from joryu.errors import ConfigError
    from joryu.experiment import output_classes

    try:
        classes = output_classes(model, bundle.test, input_key)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(f"{what} cannot read {bundle.name}'s inputs of shape {tuple(bundle.input_shape)} "
                          f"({str(e).strip().splitlines()[0]}); evaluate it on data shaped like its training "
                          "data") from None
    if classes != bundle.num_classes:
        raise ConfigError(f"{what} predicts {classes} classes but the data has {bundle.num_classes}; "
                          "evaluate it on data with its classes, or fix num_classes in its kwargs")
    return model.eval()


class RunFolder:
    """The networks of a joryu run folder: ``models`` maps a row label to (network, input key)."""

    def __init__(self, path, data: str | None = None, data_path: str | None = None,
                 data_kwargs: dict | None = None):
        from joryu.config import load_config
        from joryu.errors import ConfigError

        self.path = path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; give a run folder written by joryu (e.g. runs/kd-mnist1d)"
                              " or --model NAME --weights FILE")
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path} is not a joryu run folder (no config.yaml); give the folder a run wrote, "
                              "or --model NAME --weights FILE")
        student_file = path / "student.safetensors"
        if not student_file.is_file():
            raise ConfigError(f"run folder {path} has no student (student.safetensors is missing: the run did not "
                              "finish); finish it with `joryu run CONFIG --out FOLDER --resume`, or pass --model "
                              "and --weights")
        self.cfg = cfg = load_config(path / "config.yaml")
        if data is not None:
            self.bundle = load_data(data, data_path, data_kwargs)
        else:
            self.bundle = load_data(cfg.data.name, cfg.data.path, cfg.data.kwargs)
        self.models: dict[str, tuple] = {}
        t_cfg = getattr(cfg, "teacher", None)
        teacher_file = None if t_cfg is None else next(
            (f for f in (path / "teacher.safetensors", t_cfg.checkpoint, path / "teacher" / "final.safetensors")
             if f and Path(f).exists()), None)
        if teacher_file is not None:
            self.models["teacher"] = (build_with_weights(cfg.teacher.name, teacher_file, cfg.teacher.kwargs,
                                                         self.bundle, "the teacher", cfg.teacher.input_key),
                                      cfg.teacher.input_key)
        alone = path / "baseline" / "final.safetensors"
        if alone.is_file():
            try:
                self.models["student alone"] = (build_with_weights(
                    cfg.student.name, alone, cfg.student.kwargs, self.bundle, "the student alone",
                    cfg.student.input_key), cfg.student.input_key)
            except ConfigError:
                pass  # e.g. a baseline of another architecture: reported by the run, skipped here
        student = self._deployed(cfg, student_file)
        self.label = f"student + {cfg.method.name}"
        self.models[self.label] = (student, cfg.student.input_key)

    def _deployed(self, cfg, weights):
        """The network the run deployed (``Method.deployed_network``) with its weights loaded."""
        from joryu.data.sources import align_labels
        from joryu.errors import ConfigError
        from joryu.experiment import build_model, input_shape_of
        from joryu.methods import get_method
        from joryu.outputs import is_causal_lm
        from joryu.weights import load_into

        b = self.bundle
        plain = cfg.student.model_copy(update={"checkpoint": None})
        student = build_model(plain, b.num_classes, input_shape_of(b.test, cfg.student.input_key, b.input_shape))
        b = self.bundle = align_labels(b, is_causal_lm(student))  # HF labels: shifted for a causal LM
        teacher = self.models.get("teacher", (None,))[0]
        if teacher is None and getattr(cfg, "teacher", None) is not None:
            teacher = build_model(cfg.teacher.model_copy(update={"checkpoint": None}), b.num_classes,
                                  input_shape_of(b.test, cfg.teacher.input_key, b.input_shape))
        net = get_method(cfg.method.name, cfg.method.params).deployed_network(student, teacher)
        try:
            load_into(net, weights, f"the network method {cfg.method.name!r} deploys ({type(net).__name__})")
        except ConfigError as e:
            raise ConfigError(f"{e}; or pass --model and --weights") from None
        return check_fits(net, b, f"the student ({cfg.student.name})", cfg.student.input_key)

    @property
    def student(self):
        return self.models[self.label]


def evaluate_cli(args) -> int:
    """``joryu eval``: see ``add_parsers``."""
    from joryu.errors import ConfigError

    data_kwargs = _kv(args.data_kwarg)
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
        models = {"model": (build_with_weights(args.model, args.weights, _kv(args.model_kwarg), bundle,
                                               f"model {args.model!r}", args.input_key), args.input_key)}
        if args.teacher:
            models = {"teacher": (build_with_weights(args.teacher, args.teacher_weights, _kv(args.teacher_kwarg),
                                                     bundle, f"teacher {args.teacher!r}", args.teacher_key),
                                  args.teacher_key), **models}
        out_dir = Path(args.out) if args.out else Path("eval") / Path(args.weights).stem
    data = split_of(bundle, args.split, cfg)
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


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run folder's networks, or a model + weights, on any dataset",
                       description="top-1, top-5, NLL, ECE (15 equal-width bins, reliability diagram PNG) and, "
                                   "given a teacher, top-1 agreement and mean KL(teacher || model).")
    e.add_argument("target", nargs="?", help="a run folder (e.g. runs/kd-mnist1d)")
    e.add_argument("--model", help="zoo name or package.module:factory (instead of a run folder)")
    e.add_argument("--model-kwarg", action="append", metavar="K=V", help="keyword argument of the model factory")
    e.add_argument("--weights", help="weights of --model (safetensors, a torch state dict, see joryu.weights)")
    e.add_argument("--input-key", default="input", help="batch key --model reads")
    e.add_argument("--teacher", help="a teacher model for agreement and KL (zoo name or import path)")
    e.add_argument("--teacher-kwarg", action="append", metavar="K=V")
    e.add_argument("--teacher-weights")
    e.add_argument("--teacher-key", default="input")
    e.add_argument("--data", help="dataset name (default: the run's)")
    e.add_argument("--data-path", help="dataset path (files on disk)")
    e.add_argument("--data-kwarg", action="append", metavar="K=V", help="keyword argument of the dataset")
    e.add_argument("--split", default="test", help="test (default), val or train")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--out", help="folder for eval.json and reliability.png (default: RUN/eval)")
    e.set_defaults(func=evaluate_cli)
