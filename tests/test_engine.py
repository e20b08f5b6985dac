import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import TrainConfig
from joryu.distiller import Distiller
from joryu.engine import Engine, latest_checkpoint
from joryu.errors import ConfigError, NonFiniteLossError
from joryu.methods.supervised import SupervisedDistiller


def net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def cfg(**kw):
    base = dict(epochs=3, batch_size=32, lr=0.05, optimizer="sgd", scheduler="cosine", log_every=2)
    base.update(kw)
    return TrainConfig(**base)


def test_training_learns_and_logs(tiny_data, tmp_path):
    from joryu.data import split_validation

    tr, va = split_validation(tiny_data, 0.2)
    d = SupervisedDistiller(net())
    before = Engine(cfg(), None, progress=False).evaluate(d, va)["val/acc"]
    res = Engine(cfg(epochs=15), tmp_path, progress=False).fit(d, tr, va)
    assert res.val["val/acc"] > before + 20
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    assert {"train/loss", "val/acc", "lr", "samples_per_s"} <= set(rows[0])
    assert rows[-1]["lr"] < rows[0]["lr"]  # cosine decays


def test_grad_accumulation_matches_the_big_batch(tiny_data):
    a, b = SupervisedDistiller(net(1)), SupervisedDistiller(net(1))
    Engine(cfg(epochs=2, batch_size=40, scheduler="constant"), progress=False).fit(a, tiny_data)
    Engine(cfg(epochs=2, batch_size=20, grad_accum=2, scheduler="constant"), progress=False).fit(b, tiny_data)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_clipping_bounds_the_update(tiny_data):
    d = SupervisedDistiller(net(2))
    w0 = d.student[0].weight.detach().clone()
    Engine(cfg(epochs=1, batch_size=240, lr=1.0, momentum=0.0, scheduler="constant", clip_grad_norm=1e-3),
           progress=False).fit(d, tiny_data)
    assert (d.student[0].weight - w0).norm() <= 1e-3 + 1e-6


class Crash(Exception):
    pass


class CrashingDistiller(SupervisedDistiller):
    """Raises at a given global step, as a killed process would stop."""

    def __init__(self, student, at_step):
        super().__init__(student)
        self.at_step, self.steps = at_step, 0

    def training_step(self, batch):
        self.steps += 1
        if self.steps == self.at_step:
            raise Crash()
        return super().training_step(batch)


def test_resume_after_a_crash_gives_the_uninterrupted_result(tiny_data, tmp_path):
    from joryu.data import Augment, split_validation

    tr, va = split_validation(tiny_data, 0.2)
    c = cfg(epochs=4, checkpoint_every=2, optimizer="adam", lr=0.01)
    aug = Augment(noise=0.1)
    ref = SupervisedDistiller(net(3, dropout=0.3))
    ref_res = Engine(c, tmp_path / "ref", seed=7, progress=False).fit(ref, tr, va, augment=aug)

    crashing = CrashingDistiller(net(3, dropout=0.3), at_step=11)  # mid-epoch 2 (6 steps per epoch)
    with pytest.raises(Crash):
        Engine(c, tmp_path / "run", seed=7, progress=False).fit(crashing, tr, va, augment=aug)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000010"
    fresh = SupervisedDistiller(net(99, dropout=0.3))  # different init: must come from the checkpoint
    res = Engine(c, tmp_path / "run", seed=7, progress=False).fit(fresh, tr, va, augment=aug, resume=True)
    for p, q in zip(ref.parameters(), fresh.parameters()):
        torch.testing.assert_close(p, q)
    assert res.val == ref_res.val
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if k not in ("time_s", "samples_per_s")} for r in rows]
    ref_strip = [{k: v for k, v in json.loads(r).items() if k not in ("time_s", "samples_per_s")} for r in ref_rows]
    assert strip == ref_strip


def test_half_written_checkpoint_is_ignored(tiny_data, tmp_path):
    Engine(cfg(epochs=1), tmp_path, progress=False).fit(SupervisedDistiller(net()), tiny_data)
    (tmp_path / "checkpoints" / ".tmp-step-00000099").mkdir()
    (tmp_path / "checkpoints" / "step-00000100").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000008"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    class Exploding(SupervisedDistiller):
        def __init__(self, s):
            super().__init__(s)
            self.n = 0

        def training_step(self, batch):
            self.n += 1
            out = super().training_step(batch)
            if self.n > 10:
                out["loss"] = out["loss"] * float("nan")
            return out

    with pytest.raises(NonFiniteLossError, match="checkpoint"):
        Engine(cfg(epochs=3), tmp_path, progress=False).fit(Exploding(net()), tiny_data)
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last is not None and last.name == "step-00000008"
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(str(last / "model.safetensors")).values())


class TwoOptimizers(Distiller):
    """Manual optimization: two heads stepped by their own optimizers, one after the other."""

    automatic_optimization = False

    def __init__(self):
        super().__init__(net(4))
        self.other = nn.Linear(8, 3)

    def configure_optimizers(self, build):
        return [build(self.student.parameters()), torch.optim.SGD(self.other.parameters(), lr=0.1)]

    def training_step(self, batch):
        opt_a, opt_b = self.ctx.optimizers
        la = F.cross_entropy(self.student(batch["input"]), batch["target"])
        self.ctx.backward(la)
        self.ctx.step(opt_a)
        lb = F.cross_entropy(self.other(batch["input"]), batch["target"])
        self.ctx.backward(lb)
        self.ctx.step(opt_b)
        return {"a": la.detach(), "b": lb.detach()}


def test_manual_optimization_path(tiny_data, tmp_path):
    d = TwoOptimizers()
    w_other = d.other.weight.detach().clone()
    res = Engine(cfg(epochs=2), tmp_path, progress=False).fit(d, tiny_data)
    assert not torch.equal(w_other, d.other.weight)
    assert {"train/a", "train/b"} <= set(res.history[-1])
    assert latest_checkpoint(tmp_path / "checkpoints") is not None


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from joryu.config import TrainConfig
    from joryu.data import TensorData
    from joryu.engine import Engine
    from joryu.methods.supervised import SupervisedDistiller
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g); y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    data = TensorData({"input": x, "target": y}, 3)
    torch.manual_seed(0)
    d = SupervisedDistiller(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    eng = Engine(TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.1), sys.argv[1], progress=False)
    res = eng.fit(d, data, data)
    h = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in d.parameters())).hexdigest()
    out = {"rank": eng.accelerator.process_index, "world": eng.accelerator.num_processes, "hash": h,
           "val": res.val["val/acc"]}
    open(os.path.join(sys.argv[1], f"rank{out['rank']}.json"), "w").write(json.dumps(out))
""")


def test_two_process_cpu_run_ends_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29533", str(script), str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["hash"] == r1["hash"]
    assert r0["val"] == r1["val"]
    assert (out / "metrics.jsonl").read_text().count("\n") == 2  # only the main process wrote


class ManualSupervised(Distiller):
    """The supervised objective through the manual-optimisation path, counting optimizer steps."""

    automatic_optimization = False

    def __init__(self, seed=1):
        super().__init__(net(seed))
        self.updates = 0

    def training_step(self, batch):
        loss = F.cross_entropy(self.student(batch["input"]), batch["target"])
        self.ctx.backward(loss)
        before = self.student[0].weight.detach().clone()
        self.ctx.step(self.ctx.optimizers[0])
        self.updates += int(not torch.equal(before, self.student[0].weight))
        return {"loss": loss.detach()}


def test_manual_optimization_follows_grad_accum_and_the_schedule(tiny_data, tmp_path):
    """Manual optimisation with grad_accum=2: one update and one scheduler step per 2 batches, so
    after epoch 1 of 2 a cosine schedule is half way (the old loop stepped the schedule every
    batch and reached its end after the first epoch), and the result equals the big batch."""
    c = cfg(epochs=2, batch_size=20, grad_accum=2, lr=0.1)
    d = ManualSupervised()
    res = Engine(c, tmp_path, progress=False).fit(d, tiny_data)
    assert res.history[0]["lr"] == pytest.approx(0.1 * 0.5, rel=1e-6)  # cosine half way
    assert res.history[1]["lr"] == pytest.approx(0.0, abs=1e-9)
    batches = 240 // 20
    assert d.updates == 2 * batches // 2  # optimizer updates
    state = json.loads((latest_checkpoint(tmp_path / "checkpoints") / "state.json").read_text())
    assert state["updates"] == d.updates and state["global_step"] == 2 * batches
    # accumulated manual steps equal the big batch, as in automatic optimisation
    a, b = ManualSupervised(), ManualSupervised()
    Engine(cfg(epochs=2, batch_size=40, scheduler="constant"), progress=False).fit(a, tiny_data)
    Engine(cfg(epochs=2, batch_size=20, grad_accum=2, scheduler="constant"), progress=False).fit(b, tiny_data)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_automatic_and_manual_paths_share_one_schedule(tiny_data):
    """The same objective, automatic or manual, with grad_accum=3: same lr curve, same weights."""
    a, b = SupervisedDistiller(net(1)), ManualSupervised(1)
    ra = Engine(cfg(epochs=3, batch_size=16, grad_accum=3), progress=False).fit(a, tiny_data)
    rb = Engine(cfg(epochs=3, batch_size=16, grad_accum=3), progress=False).fit(b, tiny_data)
    assert [r["lr"] for r in ra.history] == pytest.approx([r["lr"] for r in rb.history])
    for p, q in zip(a.student.parameters(), b.student.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_resume_on_different_data_is_refused(tiny_data, tmp_path):
    Engine(cfg(epochs=1, checkpoint_every=2), tmp_path, progress=False).fit(SupervisedDistiller(net()), tiny_data)
    state = json.loads((latest_checkpoint(tmp_path / "checkpoints") / "state.json").read_text())
    assert state["loader"]["batches_per_epoch"] == 8 and state["updates"] == 8
    with pytest.raises(ConfigError, match="8 batches per epoch, the data now gives 4"):
        Engine(cfg(epochs=2), tmp_path, progress=False).fit(SupervisedDistiller(net()),
                                                            tiny_data.subset(range(120)), resume=True)
