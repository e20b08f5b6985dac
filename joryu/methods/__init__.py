"""Distillation methods, one file per paper, registered by name."""

from joryu.methods.base import (
    Method,
    Params,
    Stage,
    StageContext,
    available,
    get_method,
    listing,
    register_method,
)

__all__ = ["Method", "Params", "Stage", "StageContext", "available", "get_method", "listing", "register_method"]
