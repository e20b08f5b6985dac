"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.dropout import dropout_distillation_loss, predictive_kl
from joryu.losses.kd import kd_loss, soft_cross_entropy

__all__ = ["dropout_distillation_loss", "kd_loss", "predictive_kl", "soft_cross_entropy"]
