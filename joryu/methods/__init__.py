"""Distillation methods, one file per paper, registered by name."""

from joryu.methods.base import (
    Baseline,
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    StageResult,
    available,
    get_method,
    listing,
    method_info,
    register_method,
)

__all__ = ["Baseline", "DefaultsEvidence", "Method", "Params", "Stage", "StageContext", "StageResult", "available", "get_method", "listing", "method_info", "register_method"]
