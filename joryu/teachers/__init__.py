"""Teachers: frozen models, ensembles and an output cache, all ``teacher(batch) -> Outputs``."""

from joryu.teachers.base import (
           EnsembleTeacher,
           FrozenTeacher,
           Teacher,
           as_teacher,
           freeze,
           weights_fingerprint,
)
from joryu.teachers.cache import CachedTeacher
from joryu.teachers.fast import FastTeacher, fold_batchnorm

__all__ = ["CachedTeacher", "EnsembleTeacher", "FastTeacher", "FrozenTeacher", "Teacher", "as_teacher",
           "fold_batchnorm", "freeze", "weights_fingerprint"]
