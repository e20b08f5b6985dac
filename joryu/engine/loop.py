"""The one training loop. It runs any Distiller and never asks which method it is."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    load_fsdp_model,
    load_fsdp_optimizer,
    save_fsdp_model,
    save_fsdp_optimizer,
)
from tqdm.auto import tqdm

from joryu import meter, metrics, tracking
from joryu.atomic import append_line, atomic_write_text
from joryu.config import TrainConfig
from joryu.data.core import Augment, TensorData
from joryu.data.sources import as_source, make_loader
from joryu.distiller import Distiller
from joryu.engine import sharding
from joryu.engine.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from joryu.errors import ConfigError, NonFiniteLossError, warn
from joryu.models.checkpointing import enable_gradient_checkpointing


def optimizer_builder(cfg: TrainConfig):
    """``build(params) -> Optimizer`` from the config (params may be a list of param groups)."""

    def build(params):
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    return build


def lr_factor(cfg: TrainConfig, updates_per_epoch: int | None, total_updates: int | None = None):
    """Multiplier of the base lr after ``u`` optimizer updates (warm-up, then the schedule).

    ``total_updates``: the stage's length (default ``epochs * updates_per_epoch``; ``max_steps``
    when given). ``updates_per_epoch`` None (a stream without a length): the schedule runs on
    updates alone, so settings counted in epochs (warm-up, 'step' milestones) need
    ``steps_per_epoch``."""
    if updates_per_epoch is None and (cfg.warmup_epochs > 0 or (cfg.scheduler == "step" and cfg.milestones)):
        raise ConfigError("train.warmup_epochs and train.milestones count epochs, and this stream has no "
                          "length: give train.steps_per_epoch (batches per epoch)")
    upe = updates_per_epoch or 1
    total = max(1, total_updates if total_updates is not None else cfg.epochs * upe)
    warm = cfg.warmup_epochs * upe
    updates_per_epoch = upe

    def factor(u: int) -> float:
        if warm > 0 and u < warm:
            return (u + 1) / warm
        if cfg.scheduler == "constant":
            return 1.0
        if cfg.scheduler == "step":
            epoch = u / max(1, updates_per_epoch)
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        if cfg.scheduler == "onecycle":
            peak = 0.25 * total
            if u < peak:
                return 0.04 + 0.96 * u / peak
            p = (u - peak) / max(1.0, total - peak)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        p = (u - warm) / max(1.0, total - warm)  # cosine
        return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return factor


def _step(optimizer) -> None:
    # Accelerate's wrapper probes the file system for optional packages on every step (~0.2 ms);
    # it is needed only for the fp16 loss scaler. Every update is counted for an open budget meter.
    meter.count(meter.UPDATES)
    inner = getattr(optimizer, "optimizer", None)
    if inner is not None and getattr(optimizer, "scaler", None) is None:
        inner.step()
    else:
        optimizer.step()


def _backward(accelerator, loss) -> None:
    # Accelerate's backward divides the loss by its gradient_accumulation_steps (always 1 here: the
    # engine accumulates itself) and then calls loss.backward(): one more op and autograd node per
    # step for nothing. Its other branches (DeepSpeed, Megatron, the fp16 scaler, LOMO) keep its call.
    if (accelerator.scaler is None and accelerator.gradient_accumulation_steps == 1
            and not getattr(accelerator, "has_lomo_optimizer", False)
            and accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)):
        loss.backward()
    else:
        accelerator.backward(loss)


def _zero_grad(optimizer) -> None:
    # Accelerate's wrapper inspects the signature on every call; we handle accumulation ourselves.
    getattr(optimizer, "optimizer", optimizer).zero_grad(set_to_none=True)


class StepContext:
    """What a manual-optimization Distiller uses to step its own optimizers.

    Gradient accumulation is the engine's, as in automatic optimization: ``backward`` scales
    the loss by ``1 / grad_accum`` and ``step`` updates only on the last batch of each
    accumulation window (the engine's ``sync`` step); before that gradients accumulate."""

    def __init__(self, engine: Engine, optimizers, params_of):
        self.engine = engine
        self.accelerator = engine.accelerator
        self.optimizers = optimizers
        self._params_of = params_of
        self.sync = True  # set by the engine before each batch

    def backward(self, loss: torch.Tensor) -> None:
        accum = self.engine.cfg.grad_accum
        _backward(self.accelerator, loss / accum if accum > 1 else loss)

    def step(self, optimizer) -> None:
        """Average gradients across processes, clip, step and zero ``optimizer`` (at the end of
        an accumulation window; otherwise the gradients are kept for the next batches)."""
        if not self.sync:
            return
        params = self._params_of(optimizer)
        if self.accelerator.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.accelerator.num_processes
        if self.engine.cfg.clip_grad_norm:
            self.accelerator.clip_grad_norm_(params, self.engine.cfg.clip_grad_norm)
        _step(optimizer)
        _zero_grad(optimizer)


@dataclass
class TrainState:
    """Where a run is: everything the loop carries between batches, epochs and a resume.

    ``global_step`` counts batches, ``updates`` optimizer updates (= scheduler steps; one per
    ``grad_accum`` batches in both optimisation modes). ``sums``/``count`` accumulate the
    epoch's sample-weighted losses. ``loader`` describes the batch stream (its batches per
    epoch) so a resume on different data is refused. JSON-able through ``to_json``."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    updates: int = 0
    sums: dict = field(default_factory=dict)
    count: int = 0
    history: list = field(default_factory=list)
    elapsed: float = 0.0
    loader: dict = field(default_factory=dict)
    seen: int = 0  # samples trained on (this process)

    def to_json(self, stage: str) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "updates": self.updates, "sums": {k: float(v) for k, v in self.sums.items()},
                "count": self.count, "history": self.history, "elapsed": self.elapsed,
                "loader": self.loader, "seen": self.seen, "stage": stage}

    @classmethod
    def from_json(cls, d: dict, device) -> TrainState:
        return cls(epoch=d["epoch"], step_in_epoch=d["step_in_epoch"], global_step=d["global_step"],
                   updates=d.get("updates", -1),
                   sums={k: torch.tensor(v, device=device) for k, v in d.get("sums", {}).items()},
                   count=d.get("count", 0), history=d.get("history", []), elapsed=d.get("elapsed", 0.0),
                   loader=d.get("loader", {}), seen=d.get("seen", 0))


@dataclass
class _Run:
    """What set-up prepares for one ``fit``."""

    distiller: Distiller
    model: torch.nn.Module  # the (possibly DDP-wrapped) module the automatic path calls
    optimizers: list
    schedulers: list
    loader: object
    steps_per_epoch: int | None  # batches per epoch (None: until the stream ends)
    auto: bool
    val: object
    ckpt_dir: Path | None
    max_updates: int | None = None  # train.max_steps
    num_epochs: int = 1  # epochs the distiller is told about (planned from max_steps when given)
    t_start: float = 0.0
    elapsed_before: float = 0.0
    val_metrics: dict = field(default_factory=dict)
    layout: sharding.Layout | None = None  # train.fsdp: the distiller before it was sharded


@dataclass
class FitResult:
    """What ``fit`` returns: ``steps`` counts batches, ``updates`` update windows (one per
    ``grad_accum`` batches; each steps every optimizer the Distiller stepped on that window)."""

    history: list[dict] = field(default_factory=list)
    val: dict = field(default_factory=dict)
    steps: int = 0
    updates: int = 0
    train_time_s: float = 0.0
    samples_per_s: float = 0.0


class FsdpShards:
    """The sharded part of a checkpoint under ``train.fsdp``: Accelerate's FSDP2 save and load
    (torch.distributed.checkpoint, one file per process) of the network and its optimizers."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizers: list):
        self.accelerator, self.model, self.optimizers = accelerator, model, optimizers

    def save(self, folder: Path) -> None:
        acc, plugin = self.accelerator, self.accelerator.state.fsdp_plugin
        save_fsdp_model(plugin, acc, self.model, str(folder))
        for i, o in enumerate(self.optimizers):
            save_fsdp_optimizer(plugin, acc, o, self.model, str(folder), i)

    def load(self, folder: Path) -> None:
        acc, plugin = self.accelerator, self.accelerator.state.fsdp_plugin
        load_fsdp_model(plugin, acc, self.model, str(folder))
        for i, o in enumerate(self.optimizers):
            load_fsdp_optimizer(plugin, acc, o, self.model, str(folder), i)


def fsdp_plugin(cfg: TrainConfig) -> FullyShardedDataParallelPlugin:
    """Accelerate's FSDP2 plugin for ``cfg.fsdp``: sharded state dicts for checkpoints; each
    module whose class is named in ``wrap`` (the engine adds the student's) is its own group."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2, state_dict_type="SHARDED_STATE_DICT", auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=list(cfg.fsdp.wrap), reshard_after_forward=cfg.fsdp.reshard_after_forward,
        cpu_offload=cfg.fsdp.cpu_offload)


def _select_fsdp_on_cpu(plugin: FullyShardedDataParallelPlugin, mixed_precision: str) -> None:
    """Accelerate (1.15) selects FSDP only for accelerator devices (its state keeps DDP for CPU
    processes and ignores the plugin); its FSDP2 code itself runs on CPU processes over gloo, so
    on the CPU joryu sets the distributed type Accelerate would set on a GPU."""
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def pick_device(cfg: TrainConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return cfg.device


class Engine:
    """Trains a Distiller on data for ``cfg.epochs``; evaluates; checkpoints; resumes.

    run_dir: folder for ``metrics.jsonl`` and ``checkpoints/`` (None: nothing is written).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, seed: int = 0,
                 stage: str = "train", progress: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.stage = stage
        self.progress = progress
        device = pick_device(cfg)
        mp = cfg.mixed_precision
        if device == "cpu" and mp == "fp16":  # bf16 autocasts on the CPU too; fp16 needs a GPU's scaler
            warnings.warn("mixed_precision='fp16' is for GPUs; training in float32 on the CPU (bf16 works "
                          "on the CPU)", stacklevel=2)
            mp = "no"
        shared = AcceleratorState._shared_state
        plugin = None
        if cfg.fsdp is not None:
            if int(os.environ.get("WORLD_SIZE", "1")) < 2:
                raise ConfigError("train.fsdp shards across processes, and this is one process: launch "
                                  "with torchrun --nproc_per_node=N (N >= 2) or remove train.fsdp")
            plugin = fsdp_plugin(cfg)
        if shared.get("_mixed_precision", mp) != mp or (shared and (plugin is None) != (
                shared.get("fsdp_plugin") is None)):
            # Accelerate keeps one state per process and refuses another precision or plugin: an
            # engine in a new precision (bf16 after float32) or sharding starts it afresh (the process
            # state too when joryu marked it sharded on the CPU, so an engine without FSDP after one
            # with it is not taken for FSDP)
            AcceleratorState._reset_state(
                reset_partial_state=PartialState._shared_state.get("distributed_type") == DistributedType.FSDP)

        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mp, fsdp_plugin=plugin,
                                       **tracking.accelerator_kwargs(cfg, self.run_dir))
        if plugin is not None and not self.accelerator.is_fsdp2:
            _select_fsdp_on_cpu(plugin, mp)
        self.sharded = plugin is not None
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.accelerator.device.type == "cpu":
            torch.set_flush_denormal(True)

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        """The run's mixed-precision context: Accelerate's autocast when it has mixed precision on,
        else a null context (Accelerate's own call builds its state and reads the environment on
        every batch only to return the same null context)."""
        return self.accelerator.autocast() if self.accelerator.native_amp else nullcontext()

    @property
    def device(self):
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _loader(self, data, batch_size, shuffle, augment=None, drop_last=False):
        kw = dict(batch_size=batch_size, shuffle=shuffle, seed=self.seed, augment=augment,
                  drop_last=drop_last, device=self.device, rank=self.accelerator.process_index,
                  world_size=self.accelerator.num_processes)
        if shuffle:
            return make_loader(data, **kw)
        source = as_source(data)
        if isinstance(source, TensorData):
            return make_loader(source, **kw)
        # evaluation stream loaders are kept per dataset, so their workers (persistent_workers) last
        cache = self.__dict__.setdefault("_eval_loaders", {})
        key = (id(data), batch_size)
        if key not in cache or cache[key][0] is not data:
            cache[key] = (data, make_loader(source, **kw))
        return cache[key][1]

    def _log(self, row: dict) -> None:
        if self.run_dir is not None and self.is_main:
            append_line(self.run_dir / "metrics.jsonl", json.dumps(row))

            tracking.log(self.accelerator, row, row.get("step", 0))

    def _reduce_mean(self, sums: dict, count: int) -> dict:
        if not sums:
            return {}
        keys = sorted(sums)
        vec = torch.stack([sums[k].float() for k in keys] + [torch.tensor(float(count), device=self.device)])
        vec = self.accelerator.reduce(vec, reduction="sum")
        n = max(1.0, float(vec[-1]))
        return {k: float(v) / n for k, v in zip(keys, vec[:-1])}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, distiller: Distiller, data, prefix: str = "val", full: bool = False) -> dict:
        """Score every prediction in ``distiller.eval_logits`` with ``joryu.metrics.Scores``:
        ``{prefix}/{name}/acc`` and ``/loss`` always, ``/ppl`` for token logits, ``/miou`` for
        segmentation; ``{prefix}/acc`` and ``/loss`` of the first. ``full``: the whole
        ``Scores.compute`` result per prediction instead (``{name: result}``).

        Only positions with a known label are scored (``labeled`` True where the batch has it,
        and target != -100); a split without any gives 0, not a division by zero."""
        if not self.sharded:  # FSDP places the shards itself
            distiller.to(self.device)
        for t in distiller.teachers():
            t.to(self.device)
        was_training = distiller.training
        distiller.eval()
        loader = self._loader(data, self.cfg.eval_batch_size, shuffle=False)
        scores: dict[str, metrics.Scores] = {}
        for batch in loader.iterate(0):
            with self.autocast():
                preds = distiller.eval_logits(batch)
            for name, logits in preds.items():
                scores.setdefault(name, metrics.Scores()).update(logits.float(), batch["target"], None,
                                                                 batch.get("labeled"))
        distiller.train(was_training)
        if self.accelerator.num_processes > 1 and scores:
            vecs = [s.to_vector().to(self.device) for s in scores.values()]
            total = self.accelerator.reduce(torch.cat(vecs), reduction="sum").cpu()
            pos = 0
            for s, v in zip(scores.values(), vecs):
                s.from_vector(total[pos:pos + len(v)])
                pos += len(v)
        results = {name: s.compute() for name, s in scores.items()}
        if full:
            return results
        out = {}
        for name, r in results.items():
            for key, value in metrics.short(r).items():
                out[f"{prefix}/{name}/{key}"] = value
        if results:
            first = next(iter(results))
            out[f"{prefix}/acc"] = out[f"{prefix}/{first}/acc"]
            out[f"{prefix}/loss"] = out[f"{prefix}/{first}/loss"]
        return out

    # ------------------------------------------------------------------ training
    def fit(self, distiller: Distiller, train, val=None, augment: Augment | None = None,
            resume: bool = False) -> FitResult:
        """Train for ``cfg.epochs``: set-up, resume, then epochs of steps, each epoch ending with
        an evaluation and a checkpoint."""
        if self.cfg.epochs == 0 and self.cfg.max_steps is None:
            return FitResult(val=self.evaluate(distiller, val) if val is not None else {})
        run = self._setup(distiller, train, val, augment, compile=self.cfg.compile)
        state = self._resume(run, resume)

        if self.is_main:
            tracking.start(self.accelerator, self.cfg, self.stage)
        epoch = state.epoch
        while not self._done(run, state, epoch):
            self._epoch(run, state, epoch)
            epoch += 1
        distiller.ctx = None
        if run.layout is not None:  # the shards gathered: the trained network is whole on every process
            sharding.make_whole(distiller, run.layout)
        if self.is_main:
            tracking.end(self.accelerator)
        train_time = run.elapsed_before + time.perf_counter() - run.t_start
        return FitResult(history=state.history, val=run.val_metrics, steps=state.global_step,
                         updates=state.updates, train_time_s=train_time, samples_per_s=state.seen / max(1e-9, train_time))

    def _done(self, run: _Run, state: TrainState, epoch: int) -> bool:
        """The stage's budget is spent: ``max_steps`` updates, else ``epochs`` epochs."""
        if run.max_updates is not None:
            return state.updates >= run.max_updates
        return epoch >= self.cfg.epochs

    def dry_step(self, distiller: Distiller, train, augment: Augment | None = None) -> dict:
        """The check before training: the set-up ``fit`` does (device, loader, optimizers,
        schedules, Accelerate), then one training batch through ``_step`` (forward, backward) with
        no optimizer update, no scheduler step and nothing written, then the evaluation forward
        on the same batch. Gradients are cleared afterwards; returns the batch's losses."""
        run = self._setup(distiller, train, None, augment, compile=False)
        state = TrainState(loader=self._loader_state(run))
        batch = next(iter(run.loader.iterate(0)), None)
        if batch is None:
            raise ValueError("the training data is empty")
        distiller.on_epoch_start(0, run.num_epochs)
        run.model.train()
        try:
            self._step(run, state, batch, 0, dry=True)
        finally:
            for o in run.optimizers:
                _zero_grad(o)
            distiller.zero_grad(set_to_none=True)
            distiller.ctx = None
        distiller.eval()
        with torch.no_grad(), self.autocast():
            preds = distiller.eval_logits(batch)
        distiller.train()
        if run.layout is not None:
            sharding.make_whole(distiller, run.layout)
        target = batch.get("target")
        for name, logits in preds.items():
            if target is not None and logits.shape[0] != target.shape[0]:
                raise ConfigError(f"prediction {name!r} has {logits.shape[0]} rows for a batch of "
                                  f"{target.shape[0]} samples")
        return {k: float(v.detach().float().mean()) for k, v in state.sums.items()}

    # -- set-up: devices, loader, optimizers, one LR schedule per optimizer, Accelerate wrapping
    def _setup(self, distiller: Distiller, train, val, augment, compile: bool = False) -> _Run:
        cfg, acc = self.cfg, self.accelerator
        for t in distiller.teachers():
            t.to(self.device)
        if self.sharded and not distiller.automatic_optimization:
            raise ConfigError(f"train.fsdp needs a method the engine steps; {type(distiller).__name__} "
                              "steps its own optimizers (manual optimization): remove train.fsdp")
        distiller.to(self.device)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(distiller.deployable())
        if compile:
            distiller.deployable().compile()
        loader = self._loader(train, cfg.batch_size, shuffle=True, augment=augment, drop_last=False)
        batches = loader.batches_per_epoch() if hasattr(loader, "batches_per_epoch") else len(loader)
        if batches is None and cfg.max_steps is None and cfg.steps_per_epoch is None:
            name = getattr(getattr(loader, "data", None), "name", "the training data")
            raise ConfigError(f"{name} is a stream without a length (an IterableDataset with no __len__): "
                              "give the training budget in steps, train.max_steps (optimizer updates for the "
                              "stage) or train.steps_per_epoch (batches per epoch), or define __len__")
        steps_per_epoch = batches if cfg.steps_per_epoch is None else (
            cfg.steps_per_epoch if batches is None else min(batches, cfg.steps_per_epoch))
        if steps_per_epoch == 0:
            raise ValueError("the training data is empty")
        updates_per_epoch = math.ceil(steps_per_epoch / cfg.grad_accum) if steps_per_epoch else None
        if cfg.max_steps is not None:
            num_epochs = math.ceil(cfg.max_steps / updates_per_epoch) if updates_per_epoch else 1
        else:
            num_epochs = max(1, cfg.epochs)
        optimizers = distiller.configure_optimizers(optimizer_builder(cfg))
        factor = lr_factor(cfg, updates_per_epoch, cfg.max_steps)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]
        auto = distiller.automatic_optimization
        if self.sharded:  # the student is its own shard group, so calling it alone works (evaluation)
            names = acc.state.fsdp_plugin.transformer_cls_names_to_wrap
            names.extend(n for n in [type(distiller.deployable()).__name__] if n not in names)
        layout = sharding.record(distiller) if self.sharded else None
        if auto:
            prepared = acc.prepare(distiller, *optimizers)
            model, optimizers = prepared[0], list(prepared[1:])
        else:
            model = distiller
            optimizers = [acc.prepare_optimizer(o) for o in optimizers]
            groups = {id(o): [p for g in o.param_groups for p in g["params"]] for o in optimizers}
            distiller.ctx = StepContext(self, optimizers, lambda o: groups[id(o)])
        ckpt_dir = self.run_dir / "checkpoints" if self.run_dir is not None else None
        return _Run(distiller, model, optimizers, schedulers, loader, steps_per_epoch, auto, val, ckpt_dir,
                    max_updates=cfg.max_steps, num_epochs=num_epochs, layout=layout)

    def _loader_state(self, run: _Run) -> dict:
        return {"kind": type(run.loader).__name__, "batches_per_epoch": run.steps_per_epoch,
                "samples": run.loader.num_samples, "seed": self.seed, "max_steps": run.max_updates}

    # -- resume: the last complete checkpoint, or a clean start
    def _resume(self, run: _Run, resume: bool) -> TrainState:
        acc = self.accelerator
        state = TrainState(loader=self._loader_state(run))
        last = latest_checkpoint(run.ckpt_dir) if resume and run.ckpt_dir is not None else None
        if last is not None:
            raw = read_checkpoint(last, run.distiller, run.optimizers, run.schedulers, acc.scaler,
                                  acc.process_index, self._shards(run))
            if raw.get("world_size", 1) != acc.num_processes:
                raise ConfigError(f"checkpoint {last} was written by {raw['world_size']} processes; "
                                   f"resume with the same number (now {acc.num_processes})")
            state = TrainState.from_json(raw, self.device)
            saved = state.loader.get("batches_per_epoch")
            if saved is not None and saved != run.steps_per_epoch:
                raise ConfigError(f"checkpoint {last} was written with {saved} batches per epoch, the "
                                   f"data now gives {run.steps_per_epoch}; resume on the same data and "
                                   "batch size, or start afresh without --resume")
            if state.step_in_epoch > 0 and not getattr(run.loader, "exact_resume", True):
                own = run.loader.data.sampler if run.loader.data.sampler is not None else run.loader.data.batch_sampler
                warn(f"{self.stage}: resumed mid-epoch with the DataLoader's own sampler ({type(own).__name__}), "
                     "which draws from the global random generator: the rest of this epoch follows a new "
                     "order (give it generator=torch.Generator().manual_seed(S) for an exact resume)")
            if state.updates < 0:  # a checkpoint from before updates were counted
                state.updates = run.schedulers[0].last_epoch if run.schedulers else state.global_step
            state.loader = self._loader_state(run)
            if self.is_main and self.run_dir is not None:  # drop rows logged after the checkpoint
                atomic_write_text(self.run_dir / "metrics.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in state.history))
        elif run.ckpt_dir is not None and self.is_main:  # a fresh start: forget an earlier attempt here
            import shutil

            shutil.rmtree(run.ckpt_dir, ignore_errors=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        run.elapsed_before = state.elapsed
        run.t_start = time.perf_counter()
        run.val_metrics = ({k: v for k, v in state.history[-1].items() if k.startswith("val/")}
                           if state.history else {})
        return state

    # -- one epoch: its batches from state.step_in_epoch, then evaluation, log, checkpoint
    def _epoch(self, run: _Run, state: TrainState, epoch: int) -> None:
        """Batches from ``state.step_in_epoch`` until the epoch's end (its last batch, the
        stream's end) or, with ``max_steps``, the last update; then evaluation, log, checkpoint."""
        cfg = self.cfg
        start = state.step_in_epoch if epoch == state.epoch else 0
        if start == 0:
            state.sums, state.count = {}, 0
        state.epoch = epoch
        run.distiller.on_epoch_start(epoch, run.num_epochs)
        run.model.train()
        t_epoch, n_epoch = time.perf_counter(), 0
        desc = (f"{self.stage} {epoch + 1}/{cfg.epochs}" if run.max_updates is None
                else f"{self.stage} epoch {epoch + 1}")
        bar = tqdm(total=run.steps_per_epoch, initial=start, leave=False, dynamic_ncols=True, desc=desc,
                   disable=not (self.progress and self.is_main and sys.stderr.isatty()))
        last = run.steps_per_epoch
        i, sync = start - 1, True
        for i, batch in enumerate(run.loader.iterate(epoch, start), start=start):
            sync = self._step(run, state, batch, i)
            n_epoch += len(batch["index"])
            stop = (last is not None and i + 1 >= last) or (
                run.max_updates is not None and sync and state.updates >= run.max_updates)
            if sync and ((i + 1) % cfg.log_every == 0 or stop):
                self._check_finite(state.sums, epoch, i)
                if bar.disable is False:
                    self._show(bar, state, run.val_metrics, n_epoch / max(1e-9, time.perf_counter() - t_epoch))
            bar.update(1)
            if stop:
                break
            if cfg.checkpoint_every and sync and state.global_step % cfg.checkpoint_every == 0:
                state.step_in_epoch = i + 1
                self._checkpoint(run, state)
        bar.close()
        if n_epoch == 0 and start == 0:
            raise ConfigError(f"{self.stage}: the training data gave no batch in epoch {epoch + 1} (a stream "
                              "that ended at once?); check the dataset's __iter__")
        if not sync:  # a stream that ended inside an accumulation window: its update is made
            self._flush(run, state)
        self._check_finite(state.sums, epoch, i + 1)
        final = self._done(run, state, epoch + 1)
        self._end_epoch(run, state, epoch, n_epoch, time.perf_counter() - t_epoch, final)
        state.epoch, state.step_in_epoch, state.sums, state.count = epoch + 1, 0, {}, 0
        self._checkpoint(run, state)

    def _flush(self, run: _Run, state: TrainState) -> None:
        """The update of a partial accumulation window (automatic optimisation; a manual
        Distiller's partial window is dropped)."""
        cfg, acc = self.cfg, self.accelerator
        if run.auto:
            if cfg.clip_grad_norm:
                acc.clip_grad_norm_(run.distiller.trainable_parameters(), cfg.clip_grad_norm)
            for o in run.optimizers:
                _step(o)
        for o in run.optimizers:
            _zero_grad(o)
        for s in run.schedulers:
            s.step()
        state.updates += 1

    # -- one batch: forward, backward, and at the end of an accumulation window the update and
    #    the scheduler step; the same window and schedule for automatic and manual optimisation
    def _step(self, run: _Run, state: TrainState, batch: dict, i: int, dry: bool = False) -> bool:
        """``dry``: forward and backward only (the check before training): no update, no
        scheduler step; a manual-optimization Distiller's ``ctx.step`` keeps the gradients."""
        cfg, acc = self.cfg, self.accelerator
        sync = not dry and ((i + 1) % cfg.grad_accum == 0 or i + 1 == run.steps_per_epoch)
        if run.auto:
            no_sync = (run.model.no_sync if (not sync and acc.num_processes > 1 and not self.sharded)
                       else nullcontext)
            with no_sync(), self.autocast():
                losses = run.model(batch)
                if not isinstance(losses, dict) or "loss" not in losses:
                    raise ConfigError(f"{type(run.distiller).__name__}.training_step must return a dict "
                                      "with a 'loss'")
            if not dry or losses["loss"].requires_grad:
                loss = losses["loss"]
                _backward(acc, loss / cfg.grad_accum if cfg.grad_accum > 1 else loss)
            if sync:
                if cfg.clip_grad_norm:
                    acc.clip_grad_norm_(run.distiller.trainable_parameters(), cfg.clip_grad_norm)
                for o in run.optimizers:
                    _step(o)
                    _zero_grad(o)
        else:
            run.distiller.ctx.sync = sync
            with self.autocast():
                losses = run.distiller.training_step(batch)
        if sync:
            for s in run.schedulers:
                s.step()
            state.updates += 1
        bsz = len(batch["index"])
        state.seen += bsz
        for k, v in losses.items():
            v = v.detach().float() * bsz
            state.sums[k] = state.sums[k] + v if k in state.sums else v
        state.count += bsz
        state.global_step += 1
        return sync

    def _show(self, bar, state: TrainState, val_metrics: dict, rate: float) -> None:
        shown = {k: f"{float(v) / max(1, state.count):.4g}" for k, v in list(state.sums.items())[:3]}
        if "val/acc" in val_metrics:
            shown["val_acc"] = f"{val_metrics['val/acc']:.2f}"
        bar.set_postfix(**shown, samples_s=f"{rate:.0f}")

    # -- evaluation and the epoch's row in metrics.jsonl
    def _end_epoch(self, run: _Run, state: TrainState, epoch: int, n_epoch: int, epoch_time: float,
                   final: bool = False) -> None:
        cfg, acc = self.cfg, self.accelerator
        row = {"stage": self.stage, "epoch": epoch + 1, "step": state.global_step,
               "lr": run.optimizers[0].param_groups[0]["lr"]}
        row.update({f"train/{k}": v for k, v in self._reduce_mean(state.sums, state.count).items()})
        row["samples_per_s"] = n_epoch * acc.num_processes / max(1e-9, epoch_time)
        row.update(run.distiller.extra_metrics())
        if run.val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or final):
            run.val_metrics = self.evaluate(run.distiller, run.val)
            row.update(run.val_metrics)
        row["time_s"] = round(run.elapsed_before + time.perf_counter() - run.t_start, 3)
        state.history.append(row)
        self._log(row)
        report_every = max(1, run.num_epochs // 5)
        if self.is_main and self.progress and ((epoch + 1) % report_every == 0 or epoch == 0
                                               or epoch + 1 == cfg.epochs or final):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                              if k.startswith(("train/loss", "val/acc")) or k == "samples_per_s")
            of = f"/{cfg.epochs}" if run.max_updates is None else f" (update {state.updates}/{run.max_updates})"
            tqdm.write(f"[{self.stage}] epoch {epoch + 1}{of}: {shown}")

    # -- checkpoint: weights, optimizers, schedulers, RNG and the JSON loop state
    def _checkpoint(self, run: _Run, state: TrainState) -> None:
        if run.ckpt_dir is None:
            return
        acc = self.accelerator
        self._check_finite(state.sums, state.epoch, state.step_in_epoch)
        state.elapsed = run.elapsed_before + time.perf_counter() - run.t_start
        write_checkpoint(run.ckpt_dir, state.global_step, run.distiller, run.optimizers, run.schedulers,
                         acc.scaler, state.to_json(self.stage), acc.process_index, acc.num_processes,
                         acc.wait_for_everyone, self.cfg.keep_checkpoints, self._shards(run))

    def _shards(self, run: _Run) -> FsdpShards | None:
        return FsdpShards(self.accelerator, run.model, run.optimizers) if self.sharded else None

    def full_state_dict(self, module: torch.nn.Module) -> dict:
        """``module``'s whole state dict on the main process ({} on the others); under
        ``train.fsdp`` the shards are gathered, so every process must call it. (A sharded ``fit``
        already ends with the network whole on every process: this is for a network still
        sharded, e.g. from a Distiller's own code during training.)"""
        return self.accelerator.get_state_dict(module)

    def _check_finite(self, sums: dict, epoch: int, step: int) -> None:
        for k, v in sums.items():
            if not bool(torch.isfinite(v).all()):
                where = (f"; the last good checkpoint is kept in {self.run_dir / 'checkpoints'}"
                         if self.run_dir is not None else "")
                raise NonFiniteLossError(
                    f"{self.stage}: loss term {k!r} became non-finite in epoch {epoch + 1} near step "
                    f"{step}{where}. Lower train.lr, set train.clip_grad_norm, or check the data for NaNs."
                )
