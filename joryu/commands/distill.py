"""``joryu`` / ``joryu distill``: the main job, KD on built-in MNIST-1D."""

from __future__ import annotations

import copy

from joryu.commands._experiment import run_experiment, run_flags
from joryu.config import apply_overrides, build_config
from joryu.defaults import MAIN_JOB

HELP = "the main job: KD on built-in MNIST-1D (the default command)"


def configure(p) -> None:
    p.add_argument("--method", help="method name (default kd)")
    run_flags(p)


def run(args) -> int:
    raw = copy.deepcopy(MAIN_JOB)
    if args.method:
        raw["method"] = {"name": args.method, "params": {}}
    return run_experiment(build_config(apply_overrides(raw, args.overrides)), args)
