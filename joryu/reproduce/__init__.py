"""Small-scale reproductions of each paper's claims: ``joryu reproduce NAME``."""

from joryu.reproduce.registry import (
    Claim,
    Report,
    Table,
    available,
    fmt,
    mean_std,
    register_reproduction,
    run_reproduction,
)

__all__ = ["Claim", "Report", "Table", "available", "fmt", "mean_std", "register_reproduction",
           "run_reproduction"]
