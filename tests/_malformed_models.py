"""Factories for the malformed-input tests: models that misbehave in the ways users' models do."""

import torch
from torch import nn


class DictNoLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x):
        return {"scores": self.fc(x.flatten(1))}


def dict_without_logits(**kw):
    return DictNoLogits()


def raises(**kw):
    raise RuntimeError("weights server unreachable")


def not_a_module(**kw):
    return "a string"


def wrong_width(**kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(33, 10))


def returns_scalar(**kw):
    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.w * x.sum()

    return Scalar()


HELP = "say hello"  # a command in another module, shaped like those in joryu.commands


def configure(p):
    p.add_argument("--times", type=int, default=1)


def run(args):
    print("hello " * args.times)
    return 0
