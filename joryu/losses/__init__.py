"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.born_again import confidence_weights, cwtm_loss, dkpp_loss, dkpp_target
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
from joryu.losses.mutual import dml_loss, ensemble_logits, mutual_kl
from joryu.losses.one import gated_logits, one_loss, sigmoid_rampup
from joryu.losses.svd import align_singular_vectors, channel_matrix, rbf, svd_kd_loss, truncated_svd

__all__ = [
    "Discriminator",
    "align_singular_vectors",
    "channel_matrix",
    "confidence_weights",
    "confident_pseudo_labels",
    "cwtm_loss",
    "discriminator_loss",
    "dkpp_loss",
    "dkpp_target",
    "dml_loss",
    "dropout_distillation_loss",
    "ensemble_logits",
    "feature_l2_loss",
    "fsp_loss",
    "fsp_matrix",
    "gated_logits",
    "gd_targets",
    "generalized_distillation_loss",
    "generator_loss",
    "hint_loss",
    "kd_loss",
    "masked_cross_entropy",
    "mix_counts",
    "mutual_kl",
    "noisy_label_loss",
    "noisy_label_targets",
    "one_loss",
    "per_sample_vertical_kl",
    "pool_to",
    "predictive_kl",
    "propagate",
    "rbf",
    "relation_graph",
    "self_paced_weights",
    "sigmoid_rampup",
    "similarity_loss",
    "soft_cross_entropy",
    "soft_labels",
    "svd_kd_loss",
    "truncated_svd",
    "vertical_kd_loss",
]
