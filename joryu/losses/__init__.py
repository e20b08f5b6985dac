"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.concentration import per_sample_vertical_kl, self_paced_weights, vertical_kd_loss
from joryu.losses.data_distillation import confident_pseudo_labels, mix_counts
from joryu.losses.dropout import dropout_distillation_loss, predictive_kl
from joryu.losses.kd import kd_loss, soft_cross_entropy
from joryu.losses.meal import (
    Discriminator,
    discriminator_loss,
    generator_loss,
    pool_to,
    similarity_loss,
)

__all__ = ["confident_pseudo_labels", "Discriminator", "discriminator_loss", "dropout_distillation_loss",
           "generator_loss", "kd_loss", "mix_counts", "per_sample_vertical_kl", "pool_to", "predictive_kl",
           "self_paced_weights", "similarity_loss", "soft_cross_entropy", "vertical_kd_loss"]
