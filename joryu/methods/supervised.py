"""Plain supervised training with cross-entropy: the "student alone" baseline and teacher training."""

from __future__ import annotations

from pydantic import Field

from joryu.distiller import Distiller
from joryu.losses import masked_cross_entropy
from joryu.methods.base import Method, Params, Stage, register_method
from joryu.outputs import forward


class SupervisedParams(Params):
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    input_key: str | list[str] | dict[str, str] = Field(
        "input", description="batch key(s) the network reads (e.g. 'privileged' for a teacher; see ModelConfig.inputs)")


_DEFAULTS = SupervisedParams()  # the Distiller's defaults are the Params' (one source)


class SupervisedDistiller(Distiller):
    """CE(y, softmax(z)) with optional label smoothing; no teacher.

    Rows whose label is unknown (``labeled`` False, or target -100) are skipped; a batch with
    no labelled row gives a zero loss (semi-supervised data, see ``joryu.data.imperfect``)."""

    def __init__(self, student, input_key: str = _DEFAULTS.input_key,
                 label_smoothing: float = _DEFAULTS.label_smoothing):
        super().__init__(student, (), input_key)
        self.label_smoothing = label_smoothing

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        return {"loss": masked_cross_entropy(logits, batch["target"], batch.get("labeled"),
                                             label_smoothing=self.label_smoothing)}


@register_method("supervised", paper="baseline: cross-entropy on the labels, no teacher")
class Supervised(Method):
    Params = SupervisedParams
    needs_teacher = False
    labels_only = True
    per_position_ok = True

    def stages(self):
        p = self.params
        return [Stage("train", lambda ctx: SupervisedDistiller(ctx.student, p.input_key,
                                                                        p.label_smoothing))]
