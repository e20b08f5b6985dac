"""train.fsdp: the student sharded with FSDP2 (Accelerate's fully_shard) across two gloo
processes under torchrun; the teacher stays whole; sharded checkpoints resume bit-identically
after a SIGKILL mid-run; after training the network is whole again on every process, and
`joryu run` writes it to its run folder. Also the one-line refusals."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from joryu.config import FsdpOptions, TrainConfig
from joryu.data.core import TensorData
from joryu.engine import Engine
from joryu.engine.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from joryu.errors import ConfigError
from joryu.methods.dml import DMLDistiller
from joryu.methods.supervised import SupervisedDistiller

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, signal, sys
    import torch
    from torch import nn
    from torch.distributed.tensor import DTensor
    torch.set_num_threads(1)
    from joryu.config import FsdpOptions, TrainConfig
    from joryu.data.core import TensorData
    from joryu.engine import Engine, save_weights
    from joryu.engine.checkpoint import CheckpointError
    from joryu.methods.kd import KDDistiller
    from joryu.teachers.base import FrozenTeacher

    class Killable(KDDistiller):
        steps, local, refused, seen = 0, None, None, None
        def training_step(self, batch):
            Killable.steps += 1
            if Killable.local is None:  # while training: sharded, and not saved as if whole
                Killable.local = {n: list(p.to_local().shape) for n, p in self.student.named_parameters()
                                  if isinstance(p, DTensor)}
                try:
                    save_weights(self.student, os.path.join(out, "shards.safetensors"))
                except CheckpointError as e:
                    Killable.refused = "Engine.full_state_dict" in str(e)
            if os.environ.get("CRASH_AT") and Killable.steps == int(os.environ["CRASH_AT"]) \\
                    and int(os.environ.get("RANK", 0)) == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().training_step(batch)
        def eval_logits(self, batch):
            preds = super().eval_logits(batch)
            if Killable.seen is None or Killable.seen[0][0] == batch["index"][0]:  # the last pass's first batch
                Killable.seen = (batch["index"].clone(), batch["input"].clone(), preds["student"].detach().clone())
            return preds

    out, resume = sys.argv[1], sys.argv[2] == "resume"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:].sum(1) > 0).long()
    data = TensorData({"input": x, "target": y}, num_classes=4)
    torch.manual_seed(0)
    teacher_net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    d = Killable(student, FrozenTeacher(teacher_net), temperature=2.0, alpha=0.5,
                 divergence="forward_kl", beta=0.5)
    cfg = TrainConfig(epochs=4, batch_size=8, optimizer="adam", lr=0.01, checkpoint_every=5,
                      scheduler="cosine", device="cpu", fsdp=FsdpOptions())
    eng = Engine(cfg, out, seed=3, progress=False)
    fit = eng.fit(d, data, data, resume=resume)
    # after training the network is whole on every process: plain parameters, the sharded network's
    # outputs (its last evaluation batch), saved like any network
    whole = {n: list(p.shape) for n, p in student.named_parameters() if type(p) is nn.Parameter}
    with torch.no_grad():
        same = torch.equal(student(Killable.seen[1]), Killable.seen[2])
    rank = eng.accelerator.process_index
    save_weights(student, os.path.join(out, f"student{rank}.safetensors"))
    full = eng.full_state_dict(student)
    state = student.state_dict()
    h = hashlib.sha1(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    losses = [r["train/loss"] for r in fit.history]
    open(os.path.join(out, f"rank{rank}.json"), "w").write(json.dumps({
        "hash": h, "steps": Killable.steps, "local": Killable.local, "whole": whole, "same_outputs": same,
        "full": {k: list(v.shape) for k, v in full.items()},
        "teacher_plain": all(type(p) is nn.Parameter for p in teacher_net.parameters()),
        "losses": losses, "save_refused": Killable.refused, "val_acc": fit.val.get("val/acc")}))
""")


def _torchrun(script, args, port, crash=None):
    root = str(Path(__file__).resolve().parents[1])  # this checkout's joryu, not an installed one
    env = {**os.environ, "JORYU_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    if crash:
        env["CRASH_AT"] = str(crash)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", str(script), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow  # three torchrun launches of 2 processes
def test_fsdp_two_processes_train_sharded_and_resume_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    p = _torchrun(script, [ref, "fresh"], 29571)
    assert p.returncode == 0, p.stderr[-3000:]
    a = [json.loads((ref / f"rank{i}.json").read_text()) for i in range(2)]
    # sharded while training: each process holds half of every weight's rows
    assert a[0]["local"]["0.weight"] == [8, 8] and a[0]["local"]["2.weight"] == [2, 16]
    assert a[0]["save_refused"]  # a sharded network is not saved as if whole
    # whole after training, the same network on both processes, giving the sharded one's outputs
    shapes = {"0.weight": [16, 8], "0.bias": [16], "2.weight": [4, 16], "2.bias": [4]}
    assert a[0]["whole"] == a[1]["whole"] == shapes and a[0]["hash"] == a[1]["hash"]
    assert a[0]["same_outputs"] and a[1]["same_outputs"]
    assert a[0]["full"] == shapes and a[1]["full"] == {}  # Engine.full_state_dict: on the main process
    assert a[0]["teacher_plain"] and a[1]["teacher_plain"]  # the teacher is never sharded
    losses = a[0]["losses"]  # the loss falls every epoch
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    # 128 samples, batch 8, 2 processes: 8 steps per epoch; checkpoints at 5, 8, 10, 15, 16, ...
    # the kill at step 13 is in epoch 2, after the step-10 checkpoint
    k = _torchrun(script, [run, "fresh"], 29572, crash=13)
    assert k.returncode != 0 and not (run / "rank0.json").exists()
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    state = json.loads((last / "state.json").read_text())
    assert state["global_step"] == 10 and state["sharded"] is True
    assert not (last / "model.safetensors").exists()
    assert sorted(f.name for f in (last / "pytorch_model_fsdp_0").iterdir()) == [".metadata",
                                                                                 "__0_0.distcp",
                                                                                 "__1_0.distcp"]
    r = _torchrun(script, [run, "resume"], 29573)
    assert r.returncode == 0, r.stderr[-3000:]
    b = [json.loads((run / f"rank{i}.json").read_text()) for i in range(2)]
    assert b[0]["steps"] == 32 - 10  # only the steps after the checkpoint
    assert b[0]["hash"] == a[0]["hash"]
    assert b[0]["val_acc"] == a[0]["val_acc"]
    # the logged train loss of every epoch but the one the kill cut (epoch 2): the engine keeps the
    # epoch's partial loss sums in state.json, which only process 0 writes, so on resume both
    # processes restart from process 0's sums (an engine limit under any multi-process run)
    assert [b[0]["losses"][i] for i in (0, 2, 3)] == [a[0]["losses"][i] for i in (0, 2, 3)]


# `joryu run` with a SIGKILL of process 0 at the CRASH_AT-th batch of the distillation stage
RUN_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from joryu.engine.loop import Engine

    step, calls = Engine._step, [0]

    def counted(self, run, state, batch, i, dry=False):
        if not dry and self.stage == "student + kd":
            calls[0] += 1
            if calls[0] == int(os.environ["CRASH_AT"]) and int(os.environ.get("RANK", 0)) == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return step(self, run, state, batch, i, dry)

    if os.environ.get("CRASH_AT"):
        Engine._step = counted
    from joryu.cli import main
    sys.exit(main(sys.argv[1:]))
""")

RUN_CONFIG = """
name: fsdp
data: {name: digits}
teacher: {name: mlp, kwargs: {hidden: [32]},
          train: {epochs: 2, batch_size: 32, lr: 0.01, device: cpu, fsdp: {}}}
student: {name: mlp, kwargs: {hidden: [16]}}
train: {epochs: 3, batch_size: 32, lr: 0.01, device: cpu, checkpoint_every: 8, fsdp: {}}
"""


def _sharded_weights(ckpt: Path) -> dict:
    """The network in a sharded checkpoint (torch.distributed.checkpoint files), read whole."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = ckpt.parent / f"{ckpt.name}.pt"
    dcp_to_torch_save(ckpt / "pytorch_model_fsdp_0", out)
    return torch.load(out, weights_only=True)["model"]


@pytest.mark.slow  # three torchrun launches of `joryu run` on 2 processes
def test_joryu_run_with_fsdp_writes_a_whole_student_and_resumes_exactly(tmp_path, capsys):
    """`torchrun --nproc_per_node=2 -m joryu run` with the teacher and the student under
    train.fsdp: the run folder holds whole networks, the weights of the last sharded checkpoints;
    `joryu eval` on the folder scores the plain student as the sharded one scored itself while
    training; a run killed mid-epoch and resumed writes the same files, bit for bit."""
    from safetensors.torch import load_file

    from joryu.cli import main
    from joryu.run.folder import RunFolder

    script, cfg = tmp_path / "driver.py", tmp_path / "fsdp.yaml"
    script.write_text(RUN_DRIVER)
    cfg.write_text(RUN_CONFIG)
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _torchrun(script, ["run", cfg, "--out", ref, "--quiet"], 29574)
    assert p.returncode == 0, p.stderr[-3000:]
    # 1797 digits: 1293 to train, 2 processes, batch 32: 19 steps per epoch, 57 in 3 epochs
    student, teacher = load_file(ref / "student.safetensors"), load_file(ref / "teacher.safetensors")
    last = _sharded_weights(ref / "kd" / "checkpoints" / "step-00000057")
    assert student.keys() and all(torch.equal(last[f"student.{k}"], v) for k, v in student.items())
    last_t = _sharded_weights(sorted((ref / "teacher" / "checkpoints").glob("step-*"))[-1])
    assert all(torch.equal(last_t[f"student.{k}"], v) for k, v in teacher.items())
    # the plain student loads from the folder and scores what the sharded one logged last
    assert all(type(p) is nn.Parameter for p in RunFolder(ref).student[0].parameters())
    logged = json.loads((ref / "kd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert main(["eval", str(ref), "--split", "val"]) == 0
    capsys.readouterr()
    scored = json.loads((ref / "eval" / "eval.json").read_text())["results"]["student + kd"]
    assert scored["top1"] == pytest.approx(logged["val/acc"], abs=1e-9)
    assert scored["nll"] == pytest.approx(logged["val/loss"], rel=1e-6)

    # killed at batch 30 of the distillation (epoch 2), after the step-24 checkpoint; resumed
    k = _torchrun(script, ["run", cfg, "--out", run, "--quiet"], 29575, crash=30)
    assert k.returncode != 0 and not (run / "student.safetensors").exists()
    state = json.loads((run / "kd" / "checkpoints" / "step-00000024" / "state.json").read_text())
    assert state["sharded"] is True and state["step_in_epoch"] == 5
    r = _torchrun(script, ["run", cfg, "--out", run, "--quiet", "--resume"], 29576)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("student.safetensors", "teacher.safetensors"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    a = json.loads((ref / "results.json").read_text())["rows"]
    b = json.loads((run / "results.json").read_text())["rows"]
    assert {k: v["test_acc"] for k, v in a.items()} == {k: v["test_acc"] for k, v in b.items()}


WHOLE = textwrap.dedent("""
    import json
    import os

    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from joryu.engine import sharding

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PORT", "29581"))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    calls = []
    net[0].register_forward_hook(lambda m, i, o: calls.append(1))  # a hook of the user's own
    x = torch.randn(6, 4)
    rounds = []
    for _ in range(2):  # sharded twice: the second time needs the first one undone
        layout = sharding.record(net)
        fully_shard(net[0])
        fully_shard(net)
        sharded = isinstance(net, FSDPModule) and sharding.is_sharded(net)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        net(x).sum().backward()
        opt.step()
        net.eval()
        with torch.no_grad():
            y = net(x)
        sharding.make_whole(net, layout)
        with torch.no_grad():
            same = torch.equal(net(x), y)
        plain = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
        plain.load_state_dict(net.state_dict())
        with torch.no_grad():
            loads = torch.equal(plain(x), y)
        net.train()
        rounds.append({
            "sharded": sharded, "same": same, "loads": loads,
            "classes": [type(m).__name__ for m in net.modules()],
            "params": sorted({type(p).__name__ for p in net.parameters()}),
            "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._state_dict_pre_hooks)
                      + len(m._load_state_dict_pre_hooks) + len(m._load_state_dict_post_hooks) for m in net.modules()],
            "attrs": sorted({k for m in net.modules() for k in m.__dict__ if "composable" in k or "fsdp" in k}),
        })
    print(json.dumps({"rounds": rounds, "user_hook_calls": len(calls)}))
    dist.destroy_process_group()
""")


def test_make_whole_undoes_sharding_and_keeps_the_trained_network(tmp_path):
    """sharding.make_whole on a network fully_shard sharded (one gloo process, in a subprocess so
    this process keeps no process group): plain classes and parameters, FSDP's hooks and state gone
    (a hook of the user's own kept), the sharded network's outputs, a state dict that loads into
    the plain model; and the network can be sharded again."""
    script = tmp_path / "whole.py"
    script.write_text(WHOLE)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "JORYU_THREADS": "1", "OMP_NUM_THREADS": "1", "PORT": "29582",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for r in out["rounds"]:
        assert r["sharded"] and r["same"] and r["loads"]
        assert r["classes"] == ["Sequential", "Linear", "BatchNorm1d", "Linear"]
        assert r["params"] == ["Parameter"] and r["attrs"] == []
        assert r["hooks"] == [0, 1, 0, 0]  # only the user's forward hook on the first Linear
    assert out["user_hook_calls"] == 6  # it ran in every forward, sharded or whole


def test_fsdp_in_one_process_is_refused():
    cfg = TrainConfig(epochs=1, device="cpu", fsdp=FsdpOptions())
    with pytest.raises(ConfigError, match="train.fsdp shards across processes, and this is one process"):
        Engine(cfg, progress=False)


def test_fsdp_refuses_manual_optimization():
    """The refusal in set-up (reached here by marking a one-process engine sharded: a real
    sharded engine needs two processes)."""
    eng = Engine(TrainConfig(epochs=1, device="cpu"), progress=False)
    eng.sharded = True
    d = DMLDistiller([nn.Linear(2, 2), nn.Linear(2, 2)], "simultaneous", 1.0)
    data = TensorData({"input": torch.zeros(4, 2), "target": torch.zeros(4).long()}, num_classes=2)
    with pytest.raises(ConfigError, match="DMLDistiller steps its own optimizers"):
        eng.fit(d, data)


def test_sharded_and_whole_checkpoints_are_not_mixed(tmp_path):
    """A whole checkpoint is refused by a sharded run, in one line (and the converse)."""
    net = SupervisedDistiller(nn.Linear(2, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    path = write_checkpoint(tmp_path, 1, net, [opt], [], None, {"epoch": 0}, 0, 1, lambda: None)

    class Shards:
        def load(self, folder):
            raise AssertionError("not reached")

    with pytest.raises(CheckpointError, match="was written whole; this run is with train.fsdp"):
        read_checkpoint(path, net, [opt], [], None, 0, Shards())
    json_path = path / "state.json"
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "sharded": True}))
    with pytest.raises(CheckpointError, match=r"written sharded \(train.fsdp\); this run is without"):
        read_checkpoint(path, net, [opt], [], None, 0)


def test_fsdp_config_field():
    cfg = TrainConfig(fsdp={"wrap": ["GPT2Block"], "reshard_after_forward": False})
    assert cfg.fsdp.wrap == ["GPT2Block"] and not cfg.fsdp.reshard_after_forward
    assert TrainConfig().fsdp is None


def test_joryu_run_with_fsdp_in_one_process_is_refused_before_training(tmp_path, capsys):
    """What still cannot work: train.fsdp in one process. `joryu run` refuses it in one line in the
    check before training, so no run folder is made."""
    from joryu.cli import main

    out = tmp_path / "run"
    code = main(["run", "configs/kd_digits.yaml", "train.fsdp={wrap: []}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.strip().endswith("train.fsdp shards across processes, and this is one process: launch with "
                                "torchrun --nproc_per_node=N (N >= 2) or remove train.fsdp")
    assert not out.exists()
