"""``joryu models [NAME]``: the model zoo, or one model's options."""

from __future__ import annotations

from joryu.models import describe
from joryu.models.registry import options

HELP = "list the model zoo (models NAME: a model's options)"


def configure(p) -> None:
    p.add_argument("name", nargs="?", help="a zoo model: list its options")


def run(args) -> int:
    if args.name:
        rows = options(args.name)
        print(f"{args.name}: {describe()[args.name]}")
        print("options (student.kwargs / teacher.kwargs; num_classes and input_shape come from the data):")
        w = max((len(r[0]) for r in rows), default=0)
        for opt, ann, default in rows:
            print(f"  {opt.ljust(w)}  {ann or 'any'}  default {default}")
        return 0
    d = describe()
    w = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k.ljust(w)}  {v}")
    print("\njoryu models NAME lists a model's options. Any other nn.Module: name: "
          "'package.module:factory' in a config (kwargs go to the factory).")
    return 0
