"""One teacher-preparation policy for every method: ``prepare(teacher, ...)``.

Decides, in one place, how a method's teacher runs:

- **fold**: a single frozen network without feature taps runs as a :class:`FastTeacher`
  (BatchNorm folded into the convolutions, inference mode). The folded model shares every tensor
  with the user's teacher except the folded convolutions', and it is re-folded whenever the
  teacher's weights change (version counters), so the served outputs follow the teacher. A teacher
  with taps is not folded (a tap on a convolution would see pre-BatchNorm values).
- **cache**: a deterministic teacher's outputs are stored per (sample, augmentation draw)
  (:class:`CachedTeacher`), sized from the dataset and the run's ``Augment(draws=K)``; the cache
  is invalidated when the teacher's weights or the data change. Stochastic teachers (MC dropout,
  a random choice among teachers) are never cached, and a teacher with feature taps only when
  asked (``cache_features=True``): stored feature maps can outgrow memory.
- **place**: ``device`` / ``dtype`` pin a frozen teacher to its own device (the CPU, another GPU)
  and precision (bfloat16, float16); its outputs come back on the training device as float32,
  once per batch (:class:`FrozenTeacher`). A placed teacher is not folded (folding would build
  float32 convolutions on the training device). A teacher is never wrapped in DDP or FSDP.

Used by kd, fitnets (stage 2), born_again, generalized and noisy-label distillation and
progressive blockwise (its output-KD steps and fine-tune). The others keep their own teacher:
MEAL and dropout distillation draw at random (stochastic), knowledge concentration routes through
a ``SpecialistTeacher`` it inspects, data distillation runs its transform ensemble once offline,
and the feature methods (FSP, KD-SVD, cross-modal, blockwise local steps) tap intermediate maps.
"""

from __future__ import annotations

from joryu.teachers.base import FrozenTeacher, Teacher, as_teacher
from joryu.teachers.cache import CachedTeacher
from joryu.teachers.fast import FastTeacher


def augment_draws(augment) -> int:
    """Fixed augmentation draws per sample of the run's augmentation (1 without fixed draws)."""
    if augment is None or not getattr(augment, "active", False):
        return 1
    return max(1, int(getattr(augment, "draws", 0) or 0))


def prepare(teacher, *, num_samples: int | None = None, augment=None, fold: bool = True,
            cache: bool = True, input_key: str | None = None, cache_features: bool = False,
            device=None, dtype=None) -> Teacher:
    """The teacher a method should call (see the module docstring).

    teacher: a Teacher, an nn.Module or a list of modules (an ensemble).
    num_samples: the training set's size; without it (a stream of unknown length) nothing is cached.
    augment: the run's ``joryu.data.Augment`` (its ``draws`` size the cache).
    fold / cache: turn either part off (methods expose them as ``fast_teacher`` / ``teacher_cache``).
    device / dtype: where and in which precision the teacher runs (None: the training device, the
    model's own dtype); see :class:`FrozenTeacher`.
    """
    t = as_teacher(teacher, input_key or "input", device=device, dtype=dtype)
    if fold and type(t) is FrozenTeacher and t.taps is None and not t.placed:
        t = FastTeacher(t.model, t.input_key)
    tapped = getattr(t, "taps", None) is not None
    if cache and num_samples and not getattr(t, "stochastic", False) and not isinstance(t, CachedTeacher) \
            and (cache_features or not tapped):
        t = CachedTeacher(t, int(num_samples), draws=augment_draws(augment))
    return t


def prepare_for(ctx, teacher=None, *, fold: bool = True, cache: bool = True) -> Teacher:
    """``prepare`` with the sizes read from a method's ``StageContext`` (its teacher by default)."""
    data = ctx.train_data
    sized = hasattr(data, "__len__") and getattr(data, "sized", True)  # a stream: no cache by index
    n = len(data) if sized else None
    return prepare(ctx.teacher if teacher is None else teacher, num_samples=n, augment=ctx.augment,
                   fold=fold, cache=cache)
