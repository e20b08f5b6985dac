"""``joryu eval``: what distillation users look at, for any model on any dataset joryu loads.

Per prediction (a row of flattened ``[N, C]`` logits with a validity mask, so ``[B, C]``,
``[B, L, C]`` and ``[B, C, H, W]`` outputs all reduce to it; targets of -100 and rows with
``labeled`` False are not scored):

- top-1 and top-5 accuracy (%); top-k with k = min(5, C);
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

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
               valid: torch.Tensor | None = None) -> None:
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
        if self.t_n:
            out["agreement"] = 100.0 * self.agree / self.t_n
            out["kl_teacher"] = self.kl / self.t_n
        return out


def _loader(data, batch_size: int, device):
    from joryu.data import TensorData
    from joryu.data.core import StreamLoader, TensorLoader

    if isinstance(data, TensorData):
        return TensorLoader(data, batch_size, shuffle=False, device=device)
    return StreamLoader(data, batch_size, shuffle=False, device=device)


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
    """One panel per model: accuracy against confidence per bin, the gap shaded, ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def _save_fig(fig, path: Path) -> None:
    """Write a figure atomically (a temporary file, then rename)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_results(results: dict[str, dict]) -> str:
    """A console table of evaluation results, one row per model."""
    from joryu.report.tables import format_table

    has_t = any("agreement" in r for r in results.values())
    head = ["model", "n", "top-1 (%)", "top-5 (%)", "NLL", f"ECE (%, {ECE_BINS} bins)"]
    if has_t:
        head += ["agreement (%)", "KL(teacher ‖ model)"]
    table = [head]
    for name, r in results.items():
        row = [name, str(r["n"]), f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['nll']:.4f}", f"{r['ece']:.2f}"]
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
    atomic_write_text(js, json.dumps({**meta, "ece_bins": ECE_BINS, "results": results}, indent=1))
    return js, png
