"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.fitnets import feature_l2_loss, hint_loss
from joryu.losses.fsp import fsp_loss, fsp_matrix
from joryu.losses.kd import kd_loss, soft_cross_entropy
from joryu.losses.svd import align_singular_vectors, channel_matrix, rbf, svd_kd_loss, truncated_svd

__all__ = ["align_singular_vectors", "channel_matrix", "rbf", "svd_kd_loss", "truncated_svd",
           "feature_l2_loss", "fsp_loss", "fsp_matrix", "hint_loss", "kd_loss", "soft_cross_entropy"]
