"""The Distiller: what the engine trains. It owns the trainable networks and holds teachers."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from joryu.outputs import forward
from joryu.teachers import Teacher


class Distiller(nn.Module):
    """Base class for every method.

    Subclasses implement ``training_step(batch) -> dict`` of named scalar losses. With
    ``automatic_optimization = True`` the dict must hold ``"loss"`` and the engine does the
    backward pass and the optimizer step. With ``False`` (adversarial and bi-level methods)
    the Distiller steps its own optimizers through ``self.ctx`` (see ``engine.StepContext``):
    ``self.ctx.backward(loss)``, ``self.ctx.step(optimizer)``, ``self.ctx.optimizers``.

    Teachers are kept in a plain list, not registered as submodules, so no optimizer,
    checkpoint or DDP wrapper ever sees their parameters.
    """

    automatic_optimization = True

    def __init__(self, student: nn.Module, teachers: Iterable[Teacher] = (), input_key: str = "input"):
        super().__init__()
        self.student = student
        self._teachers: list[Teacher] = list(teachers)
        self.input_key = input_key
        self.ctx = None

    # -- the engine calls these -------------------------------------------------------------
    def forward(self, batch) -> dict[str, Tensor]:
        return self.training_step(batch)

    def training_step(self, batch) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def teachers(self) -> list[Teacher]:
        return self._teachers

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self, build: Callable[[list], torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
        """Optimizers for this Distiller; ``build(params)`` makes one from the run's config."""
        params = self.trainable_parameters()
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters")
        return [build(params)]

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Hook for schedules that live in the method (loss weights, ramps)."""

    @torch.no_grad()
    def eval_logits(self, batch) -> dict[str, Tensor]:
        """Named predictions to evaluate; the first one is the run's headline accuracy."""
        return {"student": forward(self.student, batch, self.input_key)}

    def deployable(self) -> nn.Module:
        """The network a user keeps after training."""
        return self.student

    def extra_metrics(self) -> dict[str, float]:
        out = {}
        for t in self._teachers:
            if hasattr(t, "stats"):
                out.update(t.stats())
        return out
