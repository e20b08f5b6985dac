"""Evaluation metrics chosen by the shape of the logits (see ``joryu.losses.positions``).

=====================  ==================================================================
logits                 metrics
=====================  ==================================================================
``[B, C]``             ``acc`` (% correct), ``loss`` (mean cross-entropy)
``[B, L, C]``          ``acc`` (% of tokens correct), ``loss`` (mean cross-entropy per
                       token, nats), ``ppl`` (perplexity, exp of that loss)
``[B, C, H, W]``       ``acc`` (% of pixels correct), ``loss`` (per pixel), ``miou`` (mean
                       intersection over union, %, over the classes present in the
                       predictions or the targets)
=====================  ==================================================================

Positions whose target is -100, and samples whose ``labeled`` mask is false, are ignored.
Statistics are sums (``batch_stats``) so batches and processes add up before ``finalize``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.losses.positions import kind, num_classes, rows


def batch_stats(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Summed statistics of one batch: ``correct``, ``loss``, ``count`` and, for segmentation,
    per-class ``inter``section and ``union`` counts."""
    k = kind(logits)
    if k == "classification" and target.dim() != 1:
        raise ValueError(f"logits {tuple(logits.shape)} give one prediction per sample, but the target has "
                         f"shape {tuple(target.shape)}: a per-position target needs [B, L, C] or "
                         "[B, C, H, W] logits")
    z, y, valid = rows(logits, target, mask)
    z, y = z[valid], y[valid]
    pred = z.argmax(-1)
    out = {"correct": (pred == y).sum().float(),
           "loss": F.cross_entropy(z.float(), y, reduction="sum") if len(y) else z.new_zeros(()).float(),
           "count": torch.as_tensor(float(len(y)), device=z.device)}
    if k == "segmentation":
        c = num_classes(logits)
        inter = torch.bincount(y[pred == y], minlength=c)[:c].float()
        area_p = torch.bincount(pred, minlength=c)[:c].float()
        area_y = torch.bincount(y, minlength=c)[:c].float()
        out["inter"] = inter
        out["union"] = area_p + area_y - inter
    return out


def add(total: dict[str, Tensor] | None, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    if total is None:
        return dict(stats)
    return {key: total[key] + v for key, v in stats.items()}


def finalize(stats: dict[str, Tensor], logits_kind: str) -> dict[str, float]:
    """Metrics from summed statistics (see the module docstring)."""
    n = max(1.0, float(stats["count"]))
    out = {"acc": 100.0 * float(stats["correct"]) / n, "loss": float(stats["loss"]) / n}
    if logits_kind == "tokens":
        out["ppl"] = math.exp(min(out["loss"], 700.0))
    if logits_kind == "segmentation":
        union = stats["union"]
        present = union > 0
        iou = stats["inter"][present] / union[present]
        out["miou"] = 100.0 * float(iou.mean()) if bool(present.any()) else 0.0
    return out


def compute(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    """The metrics of one set of predictions (all of a split at once)."""
    return finalize(batch_stats(logits, target, mask), kind(logits))
