"""Did it help? The evidence a run gives about its method, on the user's own pair.

A run with ``--seeds N`` trains the student alone (or the method's natural comparison) and the
student with the method on N paired seeds: for seed s both arms share the initialisation, the
data order and the augmentation draws; the teacher is trained or loaded once. Every choice reads
the validation split; the test split is read once, at the end. The paired differences are judged
by the one rule of ``joryu.stats`` (superiority when the mean clears zero by the one-sided 97.5%
t quantile times its standard error, at least 5 seeds), in words: "helped", "no evidence either
way" or "hurt".

Whatever the number of seeds, a run also says what it cannot show:

- with fewer than 5 seeds, that the difference cannot be separated from seed noise, and how many
  seeds would (``joryu.stats.seeds_needed`` from the measured spread of the paired differences,
  when there are two seeds or more);
- when the teacher is not better than the student alone on validation (distillation cannot be
  expected to help);
- when the student alone has not converged: its validation accuracy is still rising at the end
  (``still_rising``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from joryu.data.sources import known_targets
from joryu.stats import MIN_SEEDS, compare_paired, seeds_needed

RISE_POINTS = 0.5  # validation accuracy (points) gained over the last two epochs that counts as rising


def still_rising(values: list[float], points: float = RISE_POINTS) -> bool:
    """True when a validation-accuracy curve is still climbing at its end: the last epoch is the
    best so far and it is more than ``points`` above the value two epochs earlier. Needs at
    least three evaluated epochs (with fewer there is no curve to read)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < 3:
        return False
    return vals[-1] >= max(vals[:-1]) and vals[-1] - vals[-3] > points


def val_curve(history: list[dict], key: str = "val/acc") -> list[float]:
    return [r[key] for r in history if key in r]


@dataclass
class SeedValues:
    """One metric of two paired arms, per seed (``None`` where an arm was not scored)."""

    method: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)


def judge(values: SeedValues, unit: str = "points") -> dict:
    """The paired comparison of ``values`` under the rule, as JSON-able numbers plus one line."""
    c = compare_paired(values.method, values.baseline)
    out = {"method": list(values.method), "baseline": list(values.baseline), **c.as_dict(),
           "reason": c.reason, "line": c.describe(unit)}
    if c.n < MIN_SEEDS and c.n >= 2 and c.sd > 0:
        out["seeds_needed"] = seeds_needed(c.sd, c.mean)
    return out


def warnings_for(n_seeds: int, val: dict | None, teacher_val: float | None, alone_val: float | None,
                 alone_curve: list[float], alone_label: str = "the student alone") -> list[str]:
    """The sentences a run adds to its verdict (see the module docstring)."""
    out = []
    if n_seeds < MIN_SEEDS:
        if n_seeds == 1:
            out.append(f"One seed cannot separate the difference from seed noise: rerun with --seeds "
                       f"{MIN_SEEDS} (the rule needs at least {MIN_SEEDS} paired seeds).")
        else:
            need = (val or {}).get("seeds_needed")
            more = (f"; at the spread measured here, about {need} paired seeds would let a difference "
                    "of this size clear the rule" if need else "")
            out.append(f"{n_seeds} seeds are too few to judge (the rule needs at least {MIN_SEEDS}){more}.")
    if teacher_val is not None and alone_val is not None and teacher_val <= alone_val:
        out.append(f"The teacher ({teacher_val:.2f}% on validation) is not better than {alone_label} "
                   f"({alone_val:.2f}%): distillation cannot be expected to help here.")
    if still_rising(alone_curve):
        out.append(f"{alone_label[0].upper() + alone_label[1:]} has not converged: its validation "
                   f"accuracy was still rising at the last epoch ({alone_curve[-3]:.2f} -> "
                   f"{alone_curve[-1]:.2f}); a longer budget may change the comparison.")
    return out


def verdict_line(method: str, baseline: str, judged: dict, split: str) -> str:
    return (f"{method} vs {baseline}, top-1 on the {split} split: {judged['verdict']} "
            f"({judged['line']})")


def majority_baseline(train, test) -> dict | None:
    """The trivial baseline a trained network must beat: always predict the most frequent label
    of the training split (per sample, or per position for token and pixel targets; positions
    without a label, -100, are left out). Its top-1 on the test split; None where the labels are
    not known without a pass over a stream."""
    y_tr, y_te = known_targets(train), known_targets(test)
    if y_tr is None or y_te is None:
        return None
    y_tr, y_te = y_tr[y_tr >= 0].reshape(-1), y_te[y_te >= 0].reshape(-1)
    if y_tr.numel() == 0 or y_te.numel() == 0:
        return None
    majority = int(torch.bincount(y_tr.long()).argmax())
    return {"label": "majority class", "class": majority,
            "test_acc": 100.0 * float((y_te.long() == majority).float().mean())}
