"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.data_distillation import confident_pseudo_labels, mix_counts
from joryu.losses.dropout import dropout_distillation_loss, predictive_kl
from joryu.losses.meal import Discriminator, discriminator_loss, generator_loss, pool_to, similarity_loss
from joryu.losses.kd import kd_loss, soft_cross_entropy

__all__ = ["Discriminator", "discriminator_loss", "generator_loss", "pool_to", "similarity_loss", "confident_pseudo_labels", "mix_counts", "dropout_distillation_loss", "kd_loss", "predictive_kl", "soft_cross_entropy"]
