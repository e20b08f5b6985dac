"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.concentration import per_sample_vertical_kl, self_paced_weights, vertical_kd_loss
from joryu.losses.data_distillation import confident_pseudo_labels, mix_counts
from joryu.losses.dropout import dropout_distillation_loss, predictive_kl
from joryu.losses.fitnets import feature_l2_loss, hint_loss
from joryu.losses.fsp import fsp_loss, fsp_matrix
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
from joryu.losses.meal import (
    Discriminator,
    discriminator_loss,
    generator_loss,
    pool_to,
    similarity_loss,
)
from joryu.losses.svd import align_singular_vectors, channel_matrix, rbf, svd_kd_loss, truncated_svd

__all__ = ["Discriminator", "align_singular_vectors", "channel_matrix", "confident_pseudo_labels",
           "discriminator_loss", "dropout_distillation_loss", "feature_l2_loss", "fsp_loss", "fsp_matrix",
           "gd_targets", "generalized_distillation_loss", "generator_loss", "hint_loss", "kd_loss",
           "masked_cross_entropy", "mix_counts", "noisy_label_loss", "noisy_label_targets",
           "per_sample_vertical_kl", "pool_to", "predictive_kl", "propagate", "rbf", "relation_graph",
           "self_paced_weights", "similarity_loss", "soft_cross_entropy", "soft_labels", "svd_kd_loss",
           "truncated_svd", "vertical_kd_loss"]
