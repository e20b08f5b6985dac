"""``joryu config show C.yaml`` / ``joryu config schema [METHOD]``."""

from __future__ import annotations

import yaml

from joryu.commands._fields import method_schema, print_fields
from joryu.config import ExperimentConfig, TrainConfig, describe_fields, load_config
from joryu.errors import UsageError

HELP = "show a resolved config (config show C.yaml [overrides]) or a method's schema"


def configure(p) -> None:
    p.add_argument("action", choices=["show", "schema"])
    p.add_argument("target", nargs="?", help="show: a config file; schema: a method name")
    p.add_argument("overrides", nargs="*", help="show: key=value overrides")


def run(args) -> int:
    if args.action == "show":
        if not args.target:
            raise UsageError("config show needs a config file (joryu config show C.yaml [key=value ...])")
        cfg = load_config(args.target, args.overrides)
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if args.overrides:
        raise UsageError(f"config schema takes one method name, not {args.overrides}")
    if not args.target:
        print("experiment (top-level keys):")
        print_fields(describe_fields(ExperimentConfig))
        print("train (train.NAME, teacher.train.NAME):")
        print_fields(describe_fields(TrainConfig))
        print("\njoryu config schema METHOD lists a method's parameters.")
        return 0
    return method_schema(args.target)
