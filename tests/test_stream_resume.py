"""Streamed data under torchrun: 2 processes x 2 loader workers, SIGKILLed mid-epoch, resumed to
bit-identical weights. Also the single-process mid-epoch resume of a streamed source."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from joryu.config import TrainConfig
from joryu.data import as_source, build_transform
from joryu.engine import Engine
from joryu.methods.supervised import SupervisedDistiller

SCRIPT = textwrap.dedent("""
    import hashlib, json, os, signal, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    from joryu.config import TrainConfig
    from joryu.data import as_source, build_transform
    from joryu.engine import Engine
    from joryu.methods.supervised import SupervisedDistiller

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.rand(96, 1, 6, 6, generator=g)
            self.y = (self.x.mean((1, 2, 3)) > 0.5).long() + 2 * (self.x[:, 0, 0, 0] > 0.5).long()
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    class Killable(SupervisedDistiller):
        steps = 0
        def training_step(self, batch):
            Killable.steps += 1
            if os.environ.get("CRASH_AT") and Killable.steps == int(os.environ["CRASH_AT"]) \\
                    and int(os.environ.get("RANK", 0)) == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().training_step(batch)

    out, resume = sys.argv[1], sys.argv[2] == "resume"
    data = as_source(Images(), transform=build_transform(["hflip", {"random_resized_crop": {"size": 4}}]),
                     loader={"num_workers": 2})
    torch.manual_seed(0)
    d = Killable(nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)))
    cfg = TrainConfig(epochs=3, batch_size=8, optimizer="sgd", lr=0.1, checkpoint_every=4, device="cpu")
    eng = Engine(cfg, out, seed=3, progress=False)
    eng.fit(d, data, None, resume=resume)
    h = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in d.parameters())).hexdigest()
    rank = eng.accelerator.process_index
    open(os.path.join(out, f"rank{rank}.json"), "w").write(json.dumps({"hash": h, "steps": Killable.steps}))
""")


def _torchrun(script, out, mode, port, crash=None):
    env = {**os.environ, "JORYU_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if crash:
        env["CRASH_AT"] = str(crash)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={port}", str(script), str(out), mode],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow  # three torchrun launches of 2 processes x 2 workers: ~90 s on 2 shared cores
def test_torchrun_two_workers_killed_mid_epoch_resume_bit_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    ref, run = tmp_path / "ref", tmp_path / "run"
    ref.mkdir()
    run.mkdir()
    p = _torchrun(script, ref, "fresh", 29561)
    assert p.returncode == 0, p.stderr[-3000:]
    # 96 samples, batch 8, 2 processes: 6 steps per epoch per process; checkpoints at steps 4, 6,
    # 8, 12...; the kill at step 10 is in the middle of epoch 2, after the step-8 checkpoint
    k = _torchrun(script, run, "fresh", 29562, crash=10)
    assert k.returncode != 0 and not (run / "rank0.json").exists()
    state = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state["global_step"] == 8 and state["epoch"] == 1 and state["step_in_epoch"] == 2
    r = _torchrun(script, run, "resume", 29563)
    assert r.returncode == 0, r.stderr[-3000:]
    a = [json.loads((ref / f"rank{i}.json").read_text()) for i in range(2)]
    b = [json.loads((run / f"rank{i}.json").read_text()) for i in range(2)]
    assert a[0]["hash"] == a[1]["hash"] == b[0]["hash"] == b[1]["hash"]
    assert b[0]["steps"] == 18 - 8  # the resumed run trained only the steps after the checkpoint


class Images(Dataset):
    def __init__(self, n=60):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 6, 6, generator=g)
        self.y = (self.x.mean((1, 2, 3)) > 0.5).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.y[i])}


class Crash(Exception):
    pass


def test_streamed_mid_epoch_resume_in_one_process(tmp_path):
    """A crash mid-epoch, then resume: the same weights as a run never interrupted, with a
    random per-sample transform and loader workers."""
    def make():
        return as_source(Images(), transform=build_transform([{"random_resized_crop": {"size": 4}}]),
                         loader={"num_workers": 2, "persistent_workers": True})

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))

    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="sgd", lr=0.1, checkpoint_every=3, device="cpu")
    ref = SupervisedDistiller(model())
    Engine(cfg, tmp_path / "ref", seed=1, progress=False).fit(ref, make())

    class Crashing(SupervisedDistiller):
        n = 0

        def training_step(self, batch):
            Crashing.n += 1
            if Crashing.n == 11:  # epoch 2, after the step-9 checkpoint
                raise Crash
            return super().training_step(batch)

    try:
        Engine(cfg, tmp_path / "run", seed=1, progress=False).fit(Crashing(model()), make())
    except Crash:
        pass
    resumed = SupervisedDistiller(model())
    Engine(cfg, tmp_path / "run", seed=1, progress=False).fit(resumed, make(), resume=True)
    h = [hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in d.parameters())).hexdigest()
         for d in (ref, resumed)]
    assert h[0] == h[1]
