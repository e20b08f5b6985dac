"""Teachers: frozen models, ensembles, specialists, transform and MC-dropout ensembles, random
selection and an output cache, all ``teacher(batch) -> Outputs``."""

from joryu.teachers.base import (
           EnsembleTeacher,
           FrozenTeacher,
           Teacher,
           as_teacher,
           freeze,
           weights_fingerprint,
)
from joryu.teachers.cache import CachedTeacher
from joryu.teachers.fast import FastTeacher, fold_batchnorm, shared_copy
from joryu.teachers.mc_dropout import (
           MCDropoutTeacher,
           dropout_active,
           dropout_modules,
           strip_dropout,
           weight_scaled,
)
from joryu.teachers.prepare import augment_draws, prepare, prepare_for
from joryu.teachers.selection import RandomChoiceTeacher
from joryu.teachers.specialists import SpecialistTeacher, contiguous_verticals, vertical_index
from joryu.teachers.transforms import (
           Transform,
           TransformEnsembleTeacher,
           hflip,
           identity,
           scale,
           shift,
           shift_grid,
)

__all__ = ["CachedTeacher", "EnsembleTeacher", "FastTeacher", "FrozenTeacher", "MCDropoutTeacher", "RandomChoiceTeacher",
           "SpecialistTeacher", "augment_draws", "prepare", "prepare_for", "shared_copy", "Teacher", "Transform", "TransformEnsembleTeacher", "as_teacher",
           "contiguous_verticals", "dropout_active", "dropout_modules", "fold_batchnorm", "freeze", "hflip", "identity", "scale",
           "shift", "shift_grid", "strip_dropout", "vertical_index", "weight_scaled", "weights_fingerprint"]
