"""Every hyper-parameter default is declared once: in the method's Params. A Distiller takes the
values from the Params; its __init__ declares no default of its own for a Params field."""

import importlib
import inspect

import pytest

from joryu.distiller import Distiller
from joryu.methods.base import METHODS, available

# Distiller parameters whose name differs from the Params field they receive
ALIASES = {("HintDistiller", "activation"): "regressor_activation", ("SGLDDistiller", "lr"): "sgld_lr",
           ("SGLDDistiller", "step"): "sgld_step", ("APDDistiller", "betas"): "gan_betas",
           ("FinetuneDistiller", "loss"): "finetune_loss", ("NoisyLabelDistiller", "lam"): "lam"}


def _distillers():
    available()
    for name, info in METHODS.items():
        mod = importlib.import_module(info.cls.__module__)
        for _cname, cls in sorted(vars(mod).items()):
            if isinstance(cls, type) and issubclass(cls, Distiller) and cls.__module__ == mod.__name__:
                yield name, info.cls.Params, cls


CASES = list(_distillers())


def test_every_method_module_has_a_distiller():
    assert len({n for n, _, _ in CASES}) >= 17


@pytest.mark.parametrize("method,params,cls", CASES, ids=[f"{n}:{c.__name__}" for n, _, c in CASES])
def test_distiller_declares_no_default_for_a_params_field(method, params, cls):
    fields = params.model_fields
    for pn, prm in inspect.signature(cls.__init__).parameters.items():
        field = ALIASES.get((cls.__name__, pn), pn)
        if field not in fields or prm.default is inspect.Parameter.empty:
            continue
        if method == "supervised":  # the shared building block reads its defaults from SupervisedParams
            assert prm.default == fields[field].get_default(call_default_factory=True), (cls.__name__, pn)
            continue
        raise AssertionError(f"{cls.__name__}.__init__ declares {pn}={prm.default!r}; the default belongs to "
                             f"{params.__name__}.{field} ({fields[field].default!r})")
