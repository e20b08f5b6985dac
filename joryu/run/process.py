"""Which process this is, under ``torchrun`` / ``accelerate launch`` or alone."""

from __future__ import annotations

import torch
from accelerate.state import PartialState

from joryu.errors import JoryuError


def process_state() -> PartialState:
    """Accelerate's process state, set up the way the engine sets it up (gloo on a CPU-only machine)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return process_state().is_main_process


def same_on_all_processes(fn):
    """Run ``fn`` on the main process and hand its result to every process (one under torchrun)."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    import torch.distributed as dist

    box = [None]
    if state.is_main_process:
        try:
            box = [("ok", fn())]
        except JoryuError as e:  # every process stops with the same one-line error, none hangs
            box = [("error", e)]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def wait_for_everyone() -> None:
    state = process_state()
    if state.num_processes > 1:
        state.wait_for_everyone()
