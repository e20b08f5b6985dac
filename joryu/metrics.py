"""The one metric system: training-time validation (``Engine.evaluate``), ``joryu eval`` and the
report all score predictions with ``Scores``.

Per prediction (a row of flattened ``[N, C]`` logits with a validity mask, so ``[B, C]``,
``[B, L, C]`` and ``[B, C, H, W]`` outputs all reduce to it; targets of -100 and rows with
``labeled`` False are not scored):

- top-1 and top-k accuracy (%), k = min(5, C) (per position: token or pixel accuracy); top-5 is
  reported only when there are more than five classes;
- NLL: mean cross-entropy with the labels (nats); perplexity exp(NLL) for ``[B, L, C]``; mean IoU
  (%) over the classes present in the targets or predictions for ``[B, C, H, W]``;
- ECE, expected calibration error (%): confidence c = max softmax, 15 equal-width bins on
  [0, 1], ECE = sum_b (n_b / N) |acc_b - conf_b| (Guo et al. 2017); with the per-bin
  accuracy, confidence and count behind the reliability diagram;
- given a teacher (Stanton et al. 2021, "Does knowledge distillation really work?", fidelity):
  top-1 agreement (%) = mean[argmax s = argmax t] and mean KL(p_t || p_s) at temperature 1
  (nats), over the same rows.

Statistics are sums, so batches add up in ``update`` and processes add up through
``to_vector`` / ``from_vector`` before ``compute``. ``short`` gives the names the training log
uses (``acc``, ``loss``, ``ppl``, ``miou``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
        self.classes = 0
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
        self.classes = logits.shape[-1]
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
        out = {"n": self.n, "top1": 100.0 * self.top1 / n, "nll": self.nll / n}
        if self.classes > 5:  # top-5 of five classes or fewer says nothing
            out["top5"] = 100.0 * self.top5 / n
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

    # -- sums across processes: one flat float64 vector, the same layout on every process
    def to_vector(self) -> torch.Tensor:
        c = self.confusion.reshape(-1) if self.confusion is not None else torch.zeros(0, dtype=torch.float64)
        head = torch.tensor([self.n, self.top1, self.top5, self.nll, self.t_n, self.agree, self.kl],
                            dtype=torch.float64)
        return torch.cat([head, self.bin_count, self.bin_conf, self.bin_correct, c])

    def from_vector(self, vec: torch.Tensor) -> Scores:
        vec = vec.double().cpu()
        n, top1, top5, nll, t_n, agree, kl = vec[:7].tolist()
        self.n, self.top1, self.top5, self.nll = int(round(n)), top1, top5, nll
        self.t_n, self.agree, self.kl = int(round(t_n)), agree, kl
        b = self.num_bins
        self.bin_count, self.bin_conf, self.bin_correct = (vec[7:7 + b].clone(), vec[7 + b:7 + 2 * b].clone(),
                                                           vec[7 + 2 * b:7 + 3 * b].clone())
        if self.confusion is not None:
            self.confusion = vec[7 + 3 * b:].reshape(self.confusion.shape).clone()
        return self


def short(result: dict) -> dict[str, float]:
    """The training log's names for a ``Scores.compute`` result: ``acc`` (top-1 %), ``loss``
    (mean cross-entropy), ``ppl`` for token outputs, ``miou`` for dense outputs."""
    out = {"acc": result["top1"], "loss": result["nll"]}
    if "perplexity" in result:
        out["ppl"] = result["perplexity"]
    if "miou" in result:
        out["miou"] = result["miou"]
    return out


def compute(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, float]:
    """The training log's metrics (``short``) of one set of predictions (a whole split at once)."""
    s = Scores()
    s.update(logits.float(), target, None, mask)
    return short(s.compute())
