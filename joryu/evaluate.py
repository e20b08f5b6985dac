"""Scoring a network on a dataset: ``evaluate_model`` streams it through ``joryu.metrics.Scores``
(top-1/top-k, NLL, ECE with its reliability bins, perplexity or mean IoU by output shape and,
given a teacher, agreement and KL(teacher || model)). ``joryu eval`` and the run report use it."""

from __future__ import annotations

import torch

from joryu.data.sources import make_loader
from joryu.metrics import ECE_BINS, Scores
from joryu.outputs import forward


def _loader(data, batch_size: int, device):
    return make_loader(data, batch_size, shuffle=False, device=device)


@torch.no_grad()
def evaluate_predictions(predict, data, teacher: torch.nn.Module | None = None, teacher_key="input",
                         batch_size: int = 1000, device: str | torch.device = "cpu",
                         num_bins: int = ECE_BINS) -> dict[str, dict]:
    """One pass over ``data``: ``predict(batch) -> {name: logits}`` (e.g. a Distiller's
    ``eval_logits``, or one model) scored by ``Scores``, with agreement and KL(t || s) against
    ``teacher`` when given; returns ``{name: Scores.compute()}``."""
    device = torch.device(device)
    t_was = teacher.training if teacher is not None else None
    if teacher is not None:
        teacher.to(device).eval()
    scores: dict[str, Scores] = {}
    for batch in _loader(data, batch_size, device).iterate(0):
        t_logits = forward(teacher, batch, teacher_key).float() if teacher is not None else None
        for name, logits in predict(batch).items():
            scores.setdefault(name, Scores(num_bins)).update(logits.float(), batch["target"], t_logits,
                                                              batch.get("labeled"))
    if teacher is not None:
        teacher.train(t_was)
    return {name: s.compute() for name, s in scores.items()}


def evaluate_model(model: torch.nn.Module, data, input_key="input", teacher: torch.nn.Module | None = None,
                   teacher_key="input", batch_size: int = 1000, device: str | torch.device = "cpu",
                   num_bins: int = ECE_BINS) -> dict:
    """top-1/top-5, NLL, ECE (+ reliability bins) and, with ``teacher``, agreement and KL(t || s)."""
    was = model.training
    model.to(torch.device(device)).eval()
    try:
        return evaluate_predictions(lambda b: {"model": forward(model, b, input_key)}, data, teacher,
                                    teacher_key, batch_size, device, num_bins)["model"]
    finally:
        model.train(was)
