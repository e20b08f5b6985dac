"""Small-scale reproductions of each paper's claims: ``joryu reproduce NAME``."""

from joryu.reproduce.claims import Claim, Report, Table, fmt, mean_std
from joryu.reproduce.registry import available, register_reproduction, run_reproduction

__all__ = ["Claim", "Report", "Table", "available", "fmt", "mean_std", "register_reproduction",
           "run_reproduction"]
