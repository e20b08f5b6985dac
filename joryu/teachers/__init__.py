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

__all__ = ["CachedTeacher", "EnsembleTeacher", "FrozenTeacher", "Teacher", "as_teacher", "freeze",
           "weights_fingerprint"]
