#!/usr/bin/env bash
# One prepared GPU check (for a lent CUDA machine): CUDA + bf16 autocast + channels_last smoke
# test of the engine, then the KD throughput comparison resnet32x4 -> resnet8x4 at batch 256, then
# the language-model pair of `joryu bench --workload lm` (joryu/bench_lm.py) in bf16: the student
# alone, online KD, offline top-k KD (k = 32) and on-policy GKD (lmbda 0.5), tokens/s and memory.
#   bash benchmarks/gpu.sh            (prints the card, the ratios, images/s and tokens/s)
# Without CUDA it only smoke-tests the LM part on the CPU (tiny sizes; nothing is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python -m pip install -q -e . 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
else
  echo "no CUDA device: skipping the ResNet check, smoke-testing the LM part on the CPU"
  export JORYU_GPU_SH_CPU_SMOKE=1
fi
[ -n "${JORYU_GPU_SH_CPU_SMOKE:-}" ] || python - <<'PY'
import time, torch, statistics
import torch.nn.functional as F
from joryu.config import TrainConfig
from joryu.data import load
from joryu.engine import Engine
from joryu.methods.kd import KDDistiller
from joryu.models import create
from joryu.teachers import CachedTeacher, FastTeacher, FrozenTeacher
assert torch.cuda.is_available(), "no CUDA device"
print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
torch.backends.cudnn.benchmark = True
B, steps = 256, 40
data = load("synthetic", num_samples=B * steps, num_test=256, shape=(3, 32, 32)).train
def models():
    torch.manual_seed(0)
    t = create("resnet32x4", num_classes=10).cuda().to(memory_format=torch.channels_last).eval()
    s = create("resnet8x4", num_classes=10).cuda().to(memory_format=torch.channels_last)
    return t, s
cfg = TrainConfig(epochs=1, batch_size=B, optimizer="sgd", lr=0.05, scheduler="constant",
                  mixed_precision="bf16", device="cuda", log_every=10_000)
def plain():
    t, s = models(); opt = torch.optim.SGD(s.parameters(), lr=0.05, momentum=0.9)
    x_all = data.tensors["input"].cuda().contiguous(memory_format=torch.channels_last)
    y_all = data.tensors["target"].cuda()
    def run():
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for i in range(steps):
            x, y = x_all[i*B:(i+1)*B], y_all[i*B:(i+1)*B]
            with torch.autocast("cuda", torch.bfloat16):
                with torch.no_grad(): zt = t(x)
                z = s(x)
                loss = 0.9 * F.kl_div(F.log_softmax(z.float()/4, -1), F.log_softmax(zt.float()/4, -1),
                                      reduction="batchmean", log_target=True) * 16 + 0.1 * F.cross_entropy(z.float(), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        torch.cuda.synchronize(); return steps * B / (time.perf_counter() - t0)
    return run
def joryu(kind):
    t, s = models()
    teacher = FrozenTeacher(t) if kind == "eager" else FastTeacher(t, channels_last=True)
    if kind == "cache":
        teacher = CachedTeacher(teacher, len(data))
    d = KDDistiller(s, teacher, 4.0, 0.9, divergence="forward_kl", beta=0.5)
    if kind == "cache":
        Engine(cfg, progress=False).fit(d, data)
    return lambda: Engine(cfg, progress=False).fit(d, data).history[-1]["samples_per_s"]
c = {"plain": plain(), "joryu kd": joryu("eager"), "joryu kd + fast teacher": joryu("fast"),
     "joryu kd + warm cache": joryu("cache")}
for f in c.values(): f()
res = {k: [] for k in c}
for r in range(5):
    for k in (list(c) if r % 2 == 0 else list(c)[::-1]):
        res[k].append(c[k]())
med = {k: statistics.median(v) for k, v in res.items()}
for k, v in med.items():
    print(f"{k:<26} {v:9.0f} images/s  {v / med['plain']:.3f} x plain")
print("peak memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")
PY
python - <<'PY'
# The LM pair in bf16 (joryu/bench_lm.py): contenders alternate round by round (joryu.bench.measure).
import os, tempfile, time, torch
from joryu.bench import measure
from joryu.bench_lm import LMWorkload, lm_contenders, lm_data
smoke = bool(os.environ.get("JORYU_GPU_SH_CPU_SMOKE"))
device = "cpu" if smoke else "cuda"
w = LMWorkload(batch_size=2, steps=1) if smoke else LMWorkload(batch_size=32, steps=8)
rounds = 1 if smoke else 3
print(f"\n{w.name}, bf16 autocast on {device}, {w.steps} steps per round, median of {rounds} rounds")
data = lm_data(w, w.steps * w.batch_size)
if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.cuda.reset_peak_memory_stats()
t0 = time.time()
with tempfile.TemporaryDirectory(prefix="joryu-gpu-lm-") as d:
    med = measure(lm_contenders(w, data, d, device=device, mixed_precision="bf16", gkd=True), rounds)
alone = med["student alone"]
for k, v in med.items():
    print(f"{k:<30} {v:10.0f} tokens/s  {v / alone:.3f} x student alone")
if device == "cuda":
    print("peak memory", round(torch.cuda.max_memory_allocated() / 2**30, 2), "GiB")
print(f"LM part: {time.time() - t0:.0f} s")
PY
