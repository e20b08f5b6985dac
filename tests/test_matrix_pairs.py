"""The matrix, second part: every registered method on pairs its example config does not use (an
MLP on vectors, a 1-D CNN on signals, a 2-D CNN on images), and every method killed mid-run and
resumed.

On a foreign pair a method either runs (its check before training, then a short real run through
the same stage loop) or is refused before training with one line that says why: a ``JoryuError``
whose message is a single line. Anything else (a traceback from inside joryu) fails the test.
"""

from __future__ import annotations

import pytest
import torch

from joryu.config import build_config
from joryu.errors import JoryuError
from joryu.methods import available, get_method
from joryu.models.build import build_model
from joryu.run.experiment import Experiment
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher

PAIRS = {  # name -> (data, teacher, student): small and fast
    "mlp-digits": ({"name": "digits", "kwargs": {"test_size": 200}},
                   {"name": "mlp", "kwargs": {"hidden": [32]}}, {"name": "mlp", "kwargs": {"hidden": [16]}}),
    "cnn1d-mnist1d": ({"name": "mnist1d", "kwargs": {"num_samples": 500}},
                      {"name": "cnn1d", "kwargs": {"width": 8}}, {"name": "cnn1d", "kwargs": {"width": 4}}),
    "cnn2d-images": ({"name": "synthetic", "kwargs": {"num_samples": 300, "num_test": 60, "shape": [1, 12, 12]}},
                     {"name": "convnet", "kwargs": {"width": 8, "depth": 2}},
                     {"name": "convnet", "kwargs": {"width": 4, "depth": 1}}),
}
FAST = {"epochs": 1, "batch_size": 32}
SHORT_PARAMS = {  # stages with their own long budgets, cut to a smoke run
    "posterior_distillation": {"burn_in": 2, "thin": 1, "sample_epochs": 2, "gan_epochs": 1},
    "dataset_distillation": {"steps": 2, "epochs": 1},
}


def _cfg(method: str, pair: str):
    data, teacher, student = PAIRS[pair]
    params = dict(SHORT_PARAMS.get(method, {}))
    if method in ("dataset_distillation",):
        params = {k: v for k, v in params.items() if k in get_method(method).params.model_fields}
    return build_config({"name": f"{method}-{pair}", "data": data, "student": student,
                         "teacher": {**teacher, "train": FAST} if get_method(method).needs_teacher else None,
                         "method": {"name": method, "params": params}, "train": FAST})


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("method", available())
def test_a_method_on_a_pair_it_was_not_configured_for(method, pair):
    try:
        cfg = _cfg(method, pair)
        exp = Experiment(cfg, progress=False, write=False)
        prepared = exp.check()
    except JoryuError as e:  # refused before training: one line that says why
        assert "\n" not in str(e).strip() and len(str(e)) > 20, str(e)
        return
    train = prepared.train
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:150]
    small = train.subset(pick, train.name)
    torch.manual_seed(0)
    student = build_model(cfg.student, prepared.bundle.num_classes, prepared.bundle.input_shape)
    teacher = (FrozenTeacher(prepared.teacher_model, cfg.teacher.input_key)
               if prepared.teacher_model is not None else None)
    net, results = run_stages(exp.method, student=student, teacher=teacher, train=small,
                              train_cfg=prepared.train_cfg, seed=0, augment=prepared.augment, progress=False,
                              num_classes=prepared.bundle.num_classes)
    assert isinstance(net, torch.nn.Module) and results


@pytest.mark.parametrize("method", available())
def test_killed_and_resumed_gives_the_uninterrupted_result(method, tmp_path, monkeypatch):
    """A run killed after a few optimizer steps and resumed ends with the same weights as one that
    was never interrupted (on the first pair the method runs on)."""
    import joryu.engine.loop as loop

    for pair in sorted(PAIRS):
        try:
            cfg = _cfg(method, pair).model_copy(update={"baseline": False})
            exp = Experiment(cfg, progress=False, write=False)
            prepared = exp.check()
            break
        except JoryuError:
            continue
    else:
        pytest.skip(f"{method} runs on none of the generic pairs (each refusal is checked above)")
    train = prepared.train
    small = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:120],
                         train.name)
    tcfg = prepared.train_cfg.model_copy(update={"epochs": 2, "batch_size": 16, "checkpoint_every": 2})

    def run(folder, resume=False):
        torch.manual_seed(0)
        student = build_model(cfg.student, prepared.bundle.num_classes, prepared.bundle.input_shape)
        teacher = (FrozenTeacher(prepared.teacher_model, cfg.teacher.input_key)
                   if prepared.teacher_model is not None else None)
        net, _ = run_stages(exp.method, student=student, teacher=teacher, train=small, train_cfg=tcfg,
                            seed=0, augment=prepared.augment, progress=False, resume=resume,
                            run_dir=folder, num_classes=prepared.bundle.num_classes)
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    reference = run(tmp_path / "whole")
    real_step = loop.Engine._step
    calls = {"n": 0}

    def dying(self, run_, state, batch, i, dry=False):
        calls["n"] += 1
        if not dry and calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, run_, state, batch, i, dry)

    monkeypatch.setattr(loop.Engine, "_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed")
    monkeypatch.setattr(loop.Engine, "_step", real_step)
    resumed = run(tmp_path / "killed", resume=True)
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), (method, k)
