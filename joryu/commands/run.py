"""``joryu run CONFIG.yaml``: an experiment from a YAML file."""

from __future__ import annotations

from joryu.commands._experiment import run_experiment, run_flags
from joryu.config import load_config

HELP = "run an experiment from a YAML config"


def configure(p) -> None:
    p.add_argument("config")
    run_flags(p)


def run(args) -> int:
    return run_experiment(load_config(args.config, args.overrides), args)
