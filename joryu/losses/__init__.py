"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.imperfect import (
    gd_targets,
    generalized_distillation_loss,
    masked_cross_entropy,
    noisy_label_loss,
    noisy_label_targets,
    propagate,
    relation_graph,
    soft_labels,
)
from joryu.losses.kd import kd_loss, soft_cross_entropy

__all__ = [
    "gd_targets", "generalized_distillation_loss", "kd_loss", "masked_cross_entropy", "noisy_label_loss",
    "noisy_label_targets", "propagate", "relation_graph", "soft_cross_entropy", "soft_labels",
]
