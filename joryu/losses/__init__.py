"""Pure loss functions, one small file per family, each with its paper's equation."""

from joryu.losses.born_again import confidence_weights, cwtm_loss, dkpp_loss, dkpp_target
from joryu.losses.kd import kd_loss, soft_cross_entropy
from joryu.losses.mutual import dml_loss, ensemble_logits, mutual_kl
from joryu.losses.one import gated_logits, one_loss, sigmoid_rampup

__all__ = ["confidence_weights", "cwtm_loss", "dkpp_loss", "dkpp_target", "dml_loss", "ensemble_logits",
           "gated_logits", "kd_loss", "mutual_kl", "one_loss", "sigmoid_rampup", "soft_cross_entropy"]
