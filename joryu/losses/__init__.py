"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.kd import kd_loss, soft_cross_entropy

__all__ = ["kd_loss", "soft_cross_entropy"]
