"""A table of malformed inputs a user can give joryu, each checked the same way.

Every case must: exit with status 2 (the Python API: raise a ``JoryuError``), print exactly one
line on stderr with no traceback, name the offending key or file in it, and leave every file that
existed before byte-identical. Most command-line cases call ``joryu.cli.main(argv)`` in-process
(fast); a handful run ``python -m joryu`` as a real subprocess.
"""

from __future__ import annotations

import copy
import errno
import os
import pickle
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from joryu.cli import main
from joryu.errors import JoryuError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

BASE = {
    "name": "t",
    "data": {"name": "mnist1d", "kwargs": {"num_samples": 300}},
    "teacher": {"name": "cnn1d", "kwargs": {"width": 4}, "train": {"epochs": 1}},
    "student": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "train": {"epochs": 1, "batch_size": 64},
    "baseline": False,
}
DELETE = object()


def raw(**changes) -> dict:
    """BASE with dotted-key changes (``train__epochs`` spelled ``"train.epochs"`` via a dict)."""
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        parts = key.split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


def write_cfg(tmp: Path, data=None, text: str | bytes | None = None, name: str = "c.yaml") -> str:
    p = tmp / name
    if text is None:
        data = BASE if data is None else data
        data = {**data, "output_dir": str(tmp / "runs")}
        text = yaml.safe_dump(data)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def run_args(tmp, data=None, *extra, text=None):
    return ["run", write_cfg(tmp, data, text), "--out", str(tmp / "run"), "--quiet", *extra]


@dataclass
class Case:
    id: str
    category: str
    build: object  # build(tmp) -> (kind, payload, needle); kind: "cli" | "sub" | "api" | "patch" | "fsize"
    keeps_run: bool = False  # a failure after the run folder was made (disk full mid-run) keeps it


CASES: list[Case] = []


def case(category, id):
    def wrap(fn):
        CASES.append(Case(id, category, fn))
        return fn
    return wrap


def cli(category, id, needle, changes=None, extra=(), text=None):
    """A config-file case: ``joryu run C.yaml --out RUN --quiet [extra]``."""
    def build(tmp):
        data = raw(**changes) if changes is not None else None
        return "cli", run_args(tmp, data, *extra, text=text), needle
    CASES.append(Case(id, category, build))


# ----------------------------------------------------------------------------- config files

cli("config", "not-utf8", "not UTF-8", text=b"name: t\xff\xfe\n")
cli("config", "latin1-comment", "not UTF-8", text="# caf\u00e9\nname: t\n".encode("latin-1"))
cli("config", "bad-yaml", "not valid YAML at line", text="name: [unclosed\n")
cli("config", "tab-indent", "not valid YAML", text="name: t\ntrain:\n\tepochs: 1\n")
cli("config", "top-list", "must hold a mapping", text="- a\n- b\n")
cli("config", "top-scalar", "must hold a mapping", text="42\n")
cli("config", "unknown-top-key", "modle", {"modle": {"name": "x"}})
cli("config", "train-typo", "train.epohcs", {"train__epohcs": 3})
cli("config", "train-epochs-text", "train.epochs", {"train__epochs": "many"})
cli("config", "train-epochs-negative", "train.epochs", {"train__epochs": -1})
cli("config", "train-lr-zero", "train.lr", {"train__lr": 0})
cli("config", "train-optimizer", "train.optimizer", {"train__optimizer": "sgdd"})
cli("config", "train-scheduler", "train.scheduler", {"train__scheduler": "linear"})
cli("config", "train-mp", "train.mixed_precision", {"train__mixed_precision": "fp8"})
cli("config", "train-batch-zero", "train.batch_size", {"train__batch_size": 0})
cli("config", "train-momentum", "train.momentum", {"train__momentum": 1.5})
cli("config", "train-milestones", "train.milestones", {"train__milestones": "x"})
cli("config", "train-clip-zero", "train.clip_grad_norm", {"train__clip_grad_norm": 0})
cli("config", "train-not-mapping", "train", {"train": [1, 2]})
cli("config", "teacher-train-typo", "teacher.train.lrr", {"teacher__train__lrr": 0.1})
cli("config", "method-unknown", "unknown method 'kdd'", {"method": {"name": "kdd"}})
cli("config", "method-param-typo", "method.params.temprature", {"method": {"name": "kd", "params": {"temprature": 2}}})
cli("config", "method-param-type", "method.params.temperature", {"method": {"name": "kd", "params": {"temperature": "hot"}}})
cli("config", "method-params-list", "method.params", {"method": {"name": "kd", "params": [1]}})
cli("config", "method-required-param", "method.params.blocks", {"method": {"name": "progressive_blockwise"}})
cli("config", "name-slash", "name", {"name": "a/b"})
cli("config", "name-empty", "name", {"name": ""})
cli("config", "seed-text", "seed", {"seed": "x"})
cli("config", "baseline-text", "baseline", {"baseline": "maybe"})
cli("config", "student-missing", "student", {"student": DELETE})
cli("config", "student-name-missing", "student.name", {"student": {"kwargs": {}}})
cli("config", "teacher-missing-for-kd", "teacher", {"teacher": DELETE})
cli("config", "teacher-input-key", "input_b", {"teacher__input_key": "input_b"})

# ----------------------------------------------------------------------------- models
cli("model", "unknown-zoo", "unknown model 'resnet21'", {"student": {"name": "resnet21"}})
cli("model", "mlp-hiden", "student.kwargs.hiden", {"student": {"name": "mlp", "kwargs": {"hiden": [8]}}})
cli("model", "cnn1d-widht", "teacher.kwargs.widht", {"teacher__kwargs": {"widht": 4}})
cli("model", "mlp-dropout-text", "student.kwargs.dropout", {"student": {"name": "mlp", "kwargs": {"dropout": "lots"}}})
cli("model", "mlp-activation", "swish", {"student": {"name": "mlp", "kwargs": {"activation": "swish"}}})
cli("model", "class-count", "class counts differ", {"student__kwargs__num_classes": 7})
cli("model", "lenet-on-1d", "lenet5", {"student": {"name": "lenet5"}})
cli("model", "resnet-on-1d", "resnet8", {"student": {"name": "resnet8"}})
cli("model", "mlp-in-features", "student 'mlp'", {"student__kwargs__in_features": 7})
cli("model", "import-missing-module", "no_such_pkg", {"student": {"name": "no_such_pkg.models:net"}})
cli("model", "import-missing-attr", "nothing_here", {"student": {"name": "torch.nn:nothing_here"}})
cli("model", "import-not-callable", "'sep' is not callable", {"student": {"name": "os:sep"}})
cli("model", "factory-returns-str", "not a torch.nn.Module", {"student": {"name": "_malformed_models:not_a_module"}})
cli("model", "factory-raises", "weights server unreachable", {"student": {"name": "_malformed_models:raises"}})
cli("model", "factory-bad-kwargs", "_malformed_models:wrong_width", {"student": {"name": "_malformed_models:wrong_width"}})
cli("model", "dict-without-logits", "logits", {"student": {"name": "_malformed_models:dict_without_logits"}})
cli("model", "scalar-output", "_malformed_models:returns_scalar", {"student": {"name": "_malformed_models:returns_scalar"}})
cli("model", "torch-factory-bad-kw", "torch.nn:Linear", {"student": {"name": "torch.nn:Linear", "kwargs": {"in_feat": 40}}})

# ----------------------------------------------------------------------------- data
cli("data", "unknown-dataset", "unknown dataset 'mnist2d'", {"data": {"name": "mnist2d"}})
cli("data", "augment-typo", "data.augment.shfit", {"data__augment": {"shfit": 2}})
cli("data", "augment-negative", "data.augment.shift", {"data__augment": {"shift": -1}})
cli("data", "augment-noise-text", "data.augment.noise", {"data__augment": {"noise": "some"}})
cli("data", "augment-draws-noise", "data.augment", {"data__augment": {"draws": 2, "noise": 0.1}})
cli("data", "augment-not-mapping", "data.augment", {"data__augment": "yes"})
cli("data", "kwargs-typo", "data.kwargs.num_sample", {"data__kwargs": {"num_sample": 300}})
cli("data", "kwargs-type", "data.kwargs.num_samples", {"data__kwargs": {"num_samples": "many"}})
cli("data", "kwargs-path-dataset", "data.kwargs.size", {"data": {"name": "cifar10", "path": "x", "kwargs": {"size": 3}}})
cli("data", "val-fraction", "data.val_fraction", {"data__val_fraction": 1.5})
cli("data", "cifar-no-path", "data.path", {"data": {"name": "cifar10"}})
cli("data", "cifar-missing-path", "/nonexistent/cifar", {"data": {"name": "cifar10", "path": "/nonexistent/cifar"}})
cli("data", "idx-missing-path", "/nonexistent/idx", {"data": {"name": "mnist_idx", "path": "/nonexistent/idx"}})
cli("data", "images-missing-path", "/nonexistent/img", {"data": {"name": "image_folder", "path": "/nonexistent/img"}})


def _data_case(category, id, needle, dataset, make):
    """A data-file case: ``make(folder)`` writes (possibly broken) files; the needle may hold {dir}."""
    def build(tmp):
        folder = tmp / "files"
        folder.mkdir()
        target = make(folder)
        data = raw(data={"name": dataset, "path": str(folder)},
                   student={"name": "mlp", "kwargs": {"hidden": [8]}},
                   teacher={"name": "mlp", "kwargs": {"hidden": [8]}, "train": {"epochs": 1}})
        return "cli", run_args(tmp, data), needle.format(dir=folder, file=target)
    CASES.append(Case(id, category, build))


def _cifar(folder, n=4):
    from test_data_files import write_cifar10

    write_cifar10(folder, n=n)


def _broken_cifar(change):
    def make(folder):
        _cifar(folder)
        p = folder / "data_batch_2"
        change(p)
        return p
    return make


def _dump(p, obj):
    with open(p, "wb") as f:
        pickle.dump(obj, f, protocol=2)


class _Evil:
    """A pickle that would create a marker file if unpickled with code execution."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pickle(marker: Path) -> bytes:
    e = _Evil()
    e.marker = str(marker)
    return pickle.dumps({b"data": e, b"labels": []}, protocol=2)


_data_case("data-cifar", "cifar-truncated", "{file}", "cifar10",
           _broken_cifar(lambda p: p.write_bytes(p.read_bytes()[:500])))
_data_case("data-cifar", "cifar-garbage", "{file}", "cifar10",
           _broken_cifar(lambda p: p.write_bytes(b"<html>404 not found</html>")))
_data_case("data-cifar", "cifar-empty-file", "{file}", "cifar10", _broken_cifar(lambda p: p.write_bytes(b"")))
_data_case("data-cifar", "cifar-wrong-width", "{file}", "cifar10",
           _broken_cifar(lambda p: _dump(p, {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4})))
_data_case("data-cifar", "cifar-label-count", "{file}", "cifar10",
           _broken_cifar(lambda p: _dump(p, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3})))
_data_case("data-cifar", "cifar-label-range", "{file}", "cifar10",
           _broken_cifar(lambda p: _dump(p, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})))
_data_case("data-cifar", "cifar-no-labels", "{file}", "cifar10",
           _broken_cifar(lambda p: _dump(p, {b"data": np.zeros((4, 3072), np.uint8)})))
_data_case("data-cifar", "cifar-a-list", "{file}", "cifar10", _broken_cifar(lambda p: _dump(p, [1, 2, 3])))
_data_case("data-cifar", "cifar-missing-batch", "data_batch_3", "cifar10",
           _broken_cifar(lambda p: (p.parent / "data_batch_3").unlink()))
_data_case("data-cifar", "cifar-no-batches", "{dir}", "cifar10", lambda folder: folder)
_data_case("data-cifar", "cifar100-on-cifar10", "{dir}", "cifar100", _cifar)


def _cifar_code(folder):
    _cifar(folder)
    p = folder / "data_batch_1"
    p.write_bytes(_evil_pickle(folder.parent / "PWNED"))
    return p


_data_case("data-cifar", "cifar-pickle-with-code", "{file}", "cifar10", _cifar_code)


def _mnist(folder, **kw):
    from test_data_files import write_mnist

    write_mnist(folder, **kw)


def _broken_idx(change, name="train-images-idx3-ubyte"):
    def make(folder):
        _mnist(folder)
        p = folder / name
        change(p)
        return p
    return make


_data_case("data-idx", "idx-truncated", "{file}", "mnist_idx", _broken_idx(lambda p: p.write_bytes(p.read_bytes()[:20])))
_data_case("data-idx", "idx-bad-magic", "{file}", "mnist_idx", _broken_idx(lambda p: p.write_bytes(b"\x01\x02" + p.read_bytes()[2:])))
_data_case("data-idx", "idx-garbage", "{file}", "mnist_idx", _broken_idx(lambda p: p.write_bytes(b"hello world, not idx")))
_data_case("data-idx", "idx-empty", "{file}", "mnist_idx", _broken_idx(lambda p: p.write_bytes(b"")))
_data_case("data-idx", "idx-bad-gzip", "{file}", "mnist_idx", _broken_idx(lambda p: p.write_bytes(b"\x1f\x8b\x08garbage")))
_data_case("data-idx", "idx-missing-labels", "t10k-labels", "mnist_idx",
           _broken_idx(lambda p: p.unlink(), "t10k-labels-idx1-ubyte"))


def _idx_count_mismatch(folder):
    from test_data_files import write_idx

    _mnist(folder)
    p = folder / "train-labels-idx1-ubyte"
    write_idx(p, np.arange(3, dtype=np.uint8))
    return p


def _idx_swapped(folder):
    _mnist(folder)
    a, b = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    tmp = folder / "x"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    return a


_data_case("data-idx", "idx-count-mismatch", "train-labels", "mnist_idx", _idx_count_mismatch)
_data_case("data-idx", "idx-swapped", "train-", "mnist_idx", _idx_swapped)
_data_case("data-idx", "idx-empty-folder", "{dir}", "mnist_idx", lambda folder: folder)


def _images(folder, **kw):
    from test_data_files import write_image_folder

    write_image_folder(folder, **kw)


def _mixed_sizes(folder):
    from PIL import Image

    _images(folder, per_class=4)
    p = folder / "bee" / "9.png"
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(p)
    return p


def _corrupt_image(folder):
    _images(folder, per_class=4)
    p = folder / "ant" / "1.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return p


_data_case("data-images", "images-mixed-sizes", "{file}", "image_folder", _mixed_sizes)
_data_case("data-images", "images-corrupt", "{file}", "image_folder", _corrupt_image)
_data_case("data-images", "images-no-classes", "{dir}", "image_folder", lambda folder: folder)


def _empty_class(folder):
    _images(folder)
    (folder / "dog").mkdir()
    return folder / "dog"


_data_case("data-images", "images-empty-class", "{file}", "image_folder", _empty_class)


def _images_path_is_file(tmp):
    p = tmp / "images.zip"
    p.write_bytes(b"PK")
    data = raw(data={"name": "image_folder", "path": str(p)})
    return "cli", run_args(tmp, data), str(p)


CASES.append(Case("images-path-is-file", "data-images", _images_path_is_file))
cli("data", "images-bad-size", "image_size", {"data": {"name": "image_folder", "path": "/tmp",
                                                        "kwargs": {"image_size": "big"}}})

# ----------------------------------------------------------------------------- checkpoints


def _ckpt_case(id, needle, write, suffix=".safetensors", role="teacher"):
    def build(tmp):
        p = tmp / f"weights{suffix}"
        write(p)
        data = raw(**{f"{role}__checkpoint": str(p)})
        return "cli", run_args(tmp, data), needle.format(file=p)
    CASES.append(Case(id, "checkpoint", build))


def _real_teacher_state():
    from joryu.models import create

    return create("cnn1d", width=4, num_classes=10, input_shape=(1, 40)).state_dict()


def _save_st(p, state):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(p))


def _truncated_st(p):
    _save_st(p, _real_teacher_state())
    p.write_bytes(p.read_bytes()[:100])


def _truncated_pt(p):
    torch.save(_real_teacher_state(), p)
    p.write_bytes(p.read_bytes()[:300])


def _whole_model_pt(p):
    from joryu.models import create

    torch.save(create("cnn1d", width=4, num_classes=10, input_shape=(1, 40)), p)


def _evil_pt(p):
    e = _Evil()
    e.marker = str(p.parent / "PWNED")
    torch.save({"fc.weight": torch.zeros(1), "evil": e}, p)


def _wrong_shapes(p):
    from joryu.models import create

    torch.save(create("cnn1d", width=8, num_classes=10, input_shape=(1, 40)).state_dict(), p)


_ckpt_case("st-missing", "{file}", lambda p: None)
_ckpt_case("st-truncated", "{file}", _truncated_st)
_ckpt_case("st-garbage", "{file}", lambda p: p.write_bytes(b"\x00garbage" * 20))
_ckpt_case("st-empty", "{file}", lambda p: p.write_bytes(b""))
_ckpt_case("st-wrong-keys", "{file}", lambda p: _save_st(p, {"w": torch.zeros(2)}))
_ckpt_case("st-wrong-shapes", "{file}", lambda p: _save_st(p, _wrong_shapes_state()))
_ckpt_case("st-is-folder", "{file}", lambda p: p.mkdir())
_ckpt_case("pt-truncated", "{file}", _truncated_pt, ".pt")
_ckpt_case("pt-garbage", "{file}", lambda p: p.write_bytes(b"not a torch file at all"), ".pt")
_ckpt_case("pt-empty", "{file}", lambda p: p.write_bytes(b""), ".pt")
_ckpt_case("pt-whole-model", "state_dict", _whole_model_pt, ".pt")
_ckpt_case("pt-code-pickle", "{file}", _evil_pt, ".pt")
_ckpt_case("pt-plain-pickle-code", "{file}", lambda p: p.write_bytes(_evil_pickle(p.parent / "PWNED")), ".pt")
_ckpt_case("pt-wrong-shapes", "{file}", _wrong_shapes, ".pt")
_ckpt_case("pt-list", "{file}", lambda p: torch.save([torch.zeros(2)], p), ".pt")
_ckpt_case("pt-student-truncated", "{file}", _truncated_pt, ".pt", role="student")


def _wrong_shapes_state():
    from joryu.models import create

    return create("cnn1d", width=8, num_classes=10, input_shape=(1, 40)).state_dict()


# ----------------------------------------------------------------------------- checks before training
cli("preflight", "svd-width", "KD-SVD needs equal widths",
    {"method": {"name": "svd_kd", "params": {"student_points": ["blocks.0", "blocks.1"],
                                             "teacher_points": ["blocks.0", "blocks.1"]}},
     "student": {"name": "cnn1d", "kwargs": {"width": 8}}})
cli("preflight", "svd-points", "sensing points", {"method": {"name": "svd_kd"}})
cli("preflight", "fsp-width", "fsp", {"method": {"name": "fsp"}, "student": {"name": "cnn1d", "kwargs": {"width": 8}}})
cli("preflight", "noisy-no-clean", "clean", {"method": {"name": "noisy_label_distillation"},
                                            "teacher": DELETE})
cli("preflight", "cross-modal-no-input-b", "input_b", {"method": {"name": "cross_modal"}})
cli("preflight", "dropout-teacher", "dropout", {"method": {"name": "dropout_distillation"}})
cli("preflight", "fitnets-bad-hint", "blocks.9", {"method": {"name": "fitnets", "params": {"hint_layer": "blocks.9"}}})


def _diverging(tmp):
    data = raw(teacher={"name": "cnn1d", "kwargs": {"width": 4}, "train": {"epochs": 1, "lr": 1e38,
                                                                           "optimizer": "sgd"}})
    return "cli", run_args(tmp, data), "non-finite"


CASES.append(Case("diverging-loss", "training", _diverging))
if not torch.cuda.is_available():
    cli("config", "cuda-without-gpu", "train.device", {"train__device": "cuda"})

# ----------------------------------------------------------------------------- run folders


def _finished_run(tmp) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp / "runs")}))
    (run / "results.json").write_text('{"rows": {}}')
    (run / "student.safetensors").write_bytes(b"weights")
    (run / "report.md").write_text("# the user's report\n")
    return run


def _rd(id, needle, make, *extra, changes=None):
    def build(tmp):
        target = make(tmp)
        data = raw(**changes) if changes else None
        argv = ["run", write_cfg(tmp, data), "--quiet", *extra]
        return "cli", [a.format(target=target, tmp=tmp) for a in argv], needle.format(target=target)
    CASES.append(Case(id, "run-folder", build))


def _file(tmp):
    p = tmp / "run"
    p.write_text("I am a file")
    return p


def _killed_run(tmp, state=None):
    """A run folder as a kill leaves it: config.yaml and one checkpoint (whose files may be bad)."""
    run = tmp / "run"
    ck = run / "teacher" / "checkpoints" / "step-00000001"
    ck.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({**BASE, "output_dir": str(tmp / "runs")}))
    from joryu.models import create

    _save_st(ck / "model.safetensors", {f"student.{k}": v for k, v in create(
        "cnn1d", width=4, num_classes=10, input_shape=(1, 40)).state_dict().items()})
    (ck / "state.json").write_text(state or '{"epoch": 0, "step_in_epoch": 1, "global_step": 1, '
                                            '"sums": {}, "count": 0, "history": [], "elapsed": 0}')
    return run, ck


def _evil_optim(tmp):
    run, ck = _killed_run(tmp)
    (ck / "optim.pt").write_bytes(_evil_pickle(tmp / "PWNED"))
    return ck / "optim.pt"


def _evil_rng(tmp):
    run, ck = _killed_run(tmp)
    e = _Evil()
    e.marker = str(tmp / "PWNED")
    torch.save({"optimizers": [], "schedulers": [], "scaler": None}, ck / "optim.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": e}, ck / "rng-0.pt")
    return ck / "rng-0.pt"


def _truncated_optim(tmp):
    run, ck = _killed_run(tmp)
    torch.save({"optimizers": [], "schedulers": [], "scaler": None}, ck / "optim.pt")
    (ck / "optim.pt").write_bytes((ck / "optim.pt").read_bytes()[:50])
    return ck / "optim.pt"


def _garbage_state(tmp):
    run, ck = _killed_run(tmp, state="{not json")
    return ck / "state.json"


def _no_config(tmp):
    run = tmp / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    return run


def _bad_saved_config(tmp):
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {epochs: many}\n")
    return run


def _under_file(tmp):
    p = tmp / "afile"
    p.write_text("x")
    return p / "run"


_rd("out-finished-run", "{target}", _finished_run, "--out", "{target}")
_rd("out-nonempty", "{target}", _no_config, "--out", "{target}")
_rd("out-is-file", "{target}", _file, "--out", "{target}")
_rd("out-under-file", "afile", _under_file, "--out", "{target}")
_rd("resume-missing", "{target}", lambda tmp: tmp / "nothing", "--out", "{target}", "--resume")
_rd("resume-no-config", "config.yaml", _no_config, "--out", "{target}", "--resume")
_rd("resume-bad-saved-config", "config.yaml", _bad_saved_config, "--out", "{target}", "--resume")
_rd("resume-changed-epochs", "train.epochs", _finished_run, "--out", "{target}", "--resume",
    changes={"train__epochs": 2})
_rd("resume-changed-temperature", "method.params.temperature", _finished_run, "--out", "{target}",
    "--resume", changes={"method": {"name": "kd", "params": {"temperature": 2.0}}})
_rd("resume-changed-student", "student.kwargs.hidden", _finished_run, "--out", "{target}", "--resume",
    changes={"student__kwargs__hidden": [9]})
_rd("resume-and-overwrite", "--overwrite", _finished_run, "--out", "{target}", "--resume", "--overwrite")
_rd("overwrite-failing-config", "train.device", _finished_run, "--out", "{target}", "--overwrite",
    changes={"train__device": "tpu"})
_rd("overwrite-failing-model", "hiden", _finished_run, "--out", "{target}", "--overwrite",
    changes={"student__kwargs": {"hiden": [8]}})
_rd("resume-evil-optim", "{target}", _evil_optim, "--out", "{tmp}/run", "--resume")
_rd("resume-evil-rng", "{target}", _evil_rng, "--out", "{tmp}/run", "--resume")
_rd("resume-truncated-optim", "{target}", _truncated_optim, "--out", "{tmp}/run", "--resume")
_rd("resume-garbage-state", "state.json", _garbage_state, "--out", "{tmp}/run", "--resume")


def _readonly(tmp):
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "run"


CASES.append(Case("out-read-only", "run-folder", lambda tmp: (
    "readonly", ["run", write_cfg(tmp), "--quiet", "--out", str(_readonly(tmp))], "ro")))

# ----------------------------------------------------------------------------- command lines


def _argv(id, needle, argv, env=None):
    def build(tmp):
        cfg = write_cfg(tmp)
        args = [a.format(cfg=cfg, tmp=tmp) for a in argv]
        return ("env", (args, env), needle) if env else ("cli", args, needle)
    CASES.append(Case(id, "command-line", build))


_argv("unknown-command", "unknown command 'foo'", ["foo"])
_argv("unknown-command-typo", "Did you mean 'run'", ["rnu", "{cfg}"])
_argv("run-no-config", "a config file is required", ["run"])
_argv("run-config-missing", "nope.yaml", ["run", "{tmp}/nope.yaml"])
_argv("run-config-is-folder", "is a folder", ["run", "{tmp}"])
_argv("run-unknown-flag", "--bogus", ["run", "{cfg}", "--bogus"])
_argv("run-stray-word", "notanoverride", ["run", "{cfg}", "--quiet", "notanoverride"])
_argv("override-empty-key", "=5", ["run", "{cfg}", "=5"])
_argv("override-double-dot", "train..epochs", ["run", "{cfg}", "train..epochs=1"])
_argv("override-not-section", "train.epochs", ["run", "{cfg}", "train.epochs.x=1"])
_argv("override-value", "train.epochs", ["run", "{cfg}", "train.epochs=1=2"])
_argv("override-flow-no-space", "width:16", ["run", "{cfg}", "student.kwargs={{width:16}}"])
_argv("override-flow-unclosed", "student.kwargs", ["run", "{cfg}", "student.kwargs={{hidden: [8]"])
_argv("override-list-unclosed", "student.kwargs.hidden", ["run", "{cfg}", "student.kwargs.hidden=[8"])
_argv("override-after-flag-bad", "train.lr", ["run", "{cfg}", "--quiet", "train.lr=-1"])
_argv("out-missing-value", "--out", ["run", "{cfg}", "--out"])
_argv("methods-unknown", "unknown method 'kdd'", ["methods", "kdd"])
_argv("models-unknown", "unknown model 'mlpp'", ["models", "mlpp"])
_argv("config-show-no-file", "config show", ["config", "show"])
_argv("config-show-missing", "nope.yaml", ["config", "show", "{tmp}/nope.yaml"])
_argv("config-show-bad-override", "train.epochs", ["config", "show", "{cfg}", "train.epochs=x"])
_argv("config-schema-unknown", "unknown method 'kdx'", ["config", "schema", "kdx"])
_argv("config-bad-action", "invalid choice", ["config", "bogus"])
_argv("distill-bad-method", "unknown method 'kdd'", ["distill", "--method", "kdd"])
_argv("distill-bad-override", "train.epochs", ["--quiet", "train.epochs=-3"])
_argv("reproduce-seeds-text", "--seeds", ["reproduce", "kd", "--seeds", "x"])
_argv("threads-text", "JORYU_THREADS", ["methods"], env={"JORYU_THREADS": "abc"})
_argv("threads-zero", "JORYU_THREADS", ["methods"], env={"JORYU_THREADS": "0"})


def _sub(id, needle, argv, env=None, category="subprocess"):
    def build(tmp):
        cfg = write_cfg(tmp)
        bad = tmp / "bad.yaml"
        bad.write_bytes(b"name: \xff\n")
        return "sub", ([a.format(cfg=cfg, tmp=tmp, bad=bad) for a in argv], env or {}), needle
    CASES.append(Case(id, category, build))


_sub("sub-not-utf8", "not UTF-8", ["run", "{bad}"])
_sub("sub-unknown-command", "unknown command 'foo'", ["foo"])
_sub("sub-threads-abc", "JORYU_THREADS", ["methods"], {"JORYU_THREADS": "abc"})
_sub("sub-out-is-file", "is a file", ["run", "{cfg}", "--out", "{cfg}"])
_sub("sub-flow-no-space", "width:16", ["run", "{cfg}", "--quiet", "student.kwargs={{width:16}}"])

# ----------------------------------------------------------------------------- the Python API


def _tiny():
    from joryu.data import TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return TensorData({"input": x, "target": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()}, 3, "tiny")


def _api(id, needle, call):
    def build(tmp):
        return "api", call, needle
    CASES.append(Case(id, "api", build))


def _distill(teacher=True, student=None, data=None, **kw):
    import joryu

    t = nn.Linear(8, 3) if teacher is True else teacher
    return joryu.distill(t, student or nn.Linear(8, 3), data if data is not None else _tiny(),
                         progress=False, **kw)


_api("api-epohcs", "unknown training setting 'epohcs'; did you mean 'epochs'", lambda: _distill(epohcs=3))
_api("api-temprature", "did you mean 'temperature'", lambda: _distill(temprature=3))
_api("api-neither", "'zzz' is neither a training setting", lambda: _distill(zzz=1))
_api("api-lr-negative", "train.lr", lambda: _distill(lr=-1.0))
_api("api-optimizer", "train.optimizer", lambda: _distill(optimizer="sgdd"))
_api("api-epochs-text", "train.epochs", lambda: _distill(epochs="many"))
_api("api-bad-data", "train_data", lambda: _distill(data=[1, 2, 3]))
_api("api-method", "unknown method 'kdd'", lambda: _distill(method="kdd"))
_api("api-no-teacher", "needs a teacher", lambda: _distill(teacher=None))
_api("api-teacher-str", "str", lambda: _distill(teacher="resnet"))
_api("api-augment-typo", "augment.shfit", lambda: _distill(augment={"shfit": 1}))
_api("api-augment-negative", "augment.shift", lambda: _distill(augment={"shift": -1}))
_api("api-val-fraction", "val_fraction", lambda: _distill(val_fraction=2.0))
_api("api-student-width", "student Linear cannot run on the data: given a batch of shape (2, 8)", lambda: _distill(student=nn.Linear(7, 3), epochs=1))
_api("api-dict-output", "logits", lambda: _distill(student=_DictNet(), epochs=1))
_api("api-svd-width", "KD-SVD needs equal widths", lambda: _distill(
    method="svd_kd", teacher=_conv(16), student=_conv(8), data=_images_data(), epochs=1,
    student_points=["0", "2"], teacher_points=["0", "2"]))
_api("api-temperature-type", "method.params.temperature", lambda: _distill(temperature="hot"))
if not torch.cuda.is_available():
    _api("api-cuda", "cuda", lambda: _distill(device="cuda", epochs=1))


class _DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return {"out": self.fc(x)}


def _conv(width):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


def _images_data():
    from joryu.data import TensorData

    g = torch.Generator().manual_seed(0)
    return TensorData({"input": torch.randn(32, 1, 6, 6, generator=g),
                       "target": torch.randint(0, 3, (32,), generator=g)}, 3, "img")


# ----------------------------------------------------------------------------- data.fields
def _fields(id, needle, fields):
    cli("fields", id, needle, {"data__fields": fields})


_fields("clean-fraction-above-1", "data.fields.clean.fraction", {"clean": {"fraction": 1.5}})
_fields("clean-fraction-negative", "data.fields.clean.fraction", {"clean": {"fraction": -0.1}})
_fields("clean-fraction-nan", "data.fields.clean.fraction", {"clean": {"fraction": float("nan")}})
_fields("clean-per-class-negative", "data.fields.clean.per_class", {"clean": {"per_class": -3}})
_fields("clean-unknown-key", "data.fields.clean.sed", {"clean": {"fraction": 0.1, "sed": 1}})
_fields("clean-seed-text", "data.fields.clean.seed", {"clean": {"fraction": 0.1, "seed": "abc"}})
_fields("clean-seed-fraction", "data.fields.clean.seed", {"clean": {"fraction": 0.1, "seed": 1.5}})
_fields("clean-two-ways", "exactly one of", {"clean": {"fraction": 0.1, "per_class": 3}})
_fields("clean-not-mapping", "data.fields.clean", {"clean": 0.1})
_fields("noise-unknown-key", "data.fields.noise.kindd", {"noise": {"rate": 0.2, "kindd": "x"}})
_fields("noise-seed-text", "data.fields.noise.seed", {"noise": {"rate": 0.2, "seed": "x"}})
_fields("noise-rate-above-1", "data.fields.noise.rate", {"noise": {"rate": 1.5}})
_fields("noise-rate-inf", "data.fields.noise.rate", {"noise": {"rate": float("inf")}})
_fields("noise-kind", "data.fields.noise.kind", {"noise": {"kind": "wild"}})
_fields("labels-per-class-negative", "data.fields.labels_per_class.per_class", {"labels_per_class": -1})
_fields("labels-per-class-zero", "data.fields.labels_per_class.per_class", {"labels_per_class": {"per_class": 0}})
_fields("labels-per-class-text", "data.fields.labels_per_class.per_class", {"labels_per_class": "few"})
_fields("labels-per-class-unknown", "data.fields.labels_per_class.x", {"labels_per_class": {"per_class": 2, "x": 1}})
_fields("labels-per-class-seed-text", "data.fields.labels_per_class.seed",
        {"labels_per_class": {"per_class": 2, "seed": "s"}})
_fields("privileged-unknown-key", "data.fields.privileged.extra", {"privileged": {"transform": ["hflip"], "extra": 1}})
_fields("input-b-both-ways", "data.fields.input_b", {"input_b": {"transform": ["hflip"], "factory": "a:b"}})
_fields("fields-unknown", "cleen", {"cleen": {"fraction": 0.1}})

# ----------------------------------------------------------------------------- transform arguments


def _tf(id, needle, spec, key="transform"):
    cli("transforms", id, needle, {f"data__{key}": spec})


_tf("resize-zero", "'resize'", [{"resize": 0}])
_tf("resize-negative", "'resize'", [{"resize": -3}])
_tf("resize-pair-zero", "'resize'", [{"resize": [4, 0]}])
_tf("resize-fraction", "'resize'", [{"resize": 2.5}])
_tf("resize-text", "'resize'", [{"resize": "big"}])
_tf("center-crop-zero", "'center_crop'", [{"center_crop": 0}])
_tf("crop-scale-above-1", "scale", [{"random_resized_crop": {"size": 4, "scale": [0.5, 2]}}])
_tf("crop-scale-reversed", "scale", [{"random_resized_crop": {"size": 4, "scale": [0.9, 0.1]}}])
_tf("crop-ratio-negative", "ratio", [{"random_resized_crop": {"size": 4, "ratio": [-1, 2]}}])
_tf("crop-size-zero", "'random_resized_crop'", [{"random_resized_crop": {"size": 0}}])
_tf("hflip-p-above-1", "'hflip'", [{"hflip": 1.5}])
_tf("jitter-brightness-negative", "brightness", [{"color_jitter": {"brightness": -0.5}}])
_tf("jitter-contrast-above-1", "contrast", [{"color_jitter": {"contrast": 3}}])
_tf("jitter-saturation-text", "saturation", [{"color_jitter": {"saturation": "lots"}}])
_tf("normalize-std-nan", "normalize", [{"normalize": {"mean": [0.5], "std": [float("nan")]}}])
_tf("eval-resize-zero", "'resize'", [{"resize": 0}], key="eval_transform")
_tf("view-resize-negative", "'resize'", {"input_teacher": [{"resize": -1}]}, key="views")

# ----------------------------------------------------------------------------- image folders


def _same_file_two_classes(folder):
    _images(folder, per_class=3)
    src = folder / "ant" / "0.png"
    (folder / "bee" / "ant0.png").symlink_to(src)
    return src


def _copy_two_classes(folder):
    _images(folder, per_class=3)
    src = folder / "cat" / "1.png"
    (folder / "ant" / "copy.png").write_bytes(src.read_bytes())
    return src


def _hardlink_two_classes(folder):
    _images(folder, per_class=3)
    src = folder / "bee" / "2.png"
    os.link(src, folder / "cat" / "linked.png")
    return src


def _broken_link(folder):
    _images(folder, per_class=3)
    p = folder / "ant" / "gone.png"
    p.symlink_to(folder / "nowhere.png")
    return p


def _loop_and_dup(folder):
    """A symlink loop (walked once) next to a file in two classes (refused)."""
    _images(folder, per_class=3)
    (folder / "ant" / "loop").symlink_to(folder / "ant")
    src = folder / "bee" / "0.png"
    (folder / "cat" / "again.png").symlink_to(src)
    return src


_data_case("data-images", "images-same-file-two-classes", "{file}", "image_folder", _same_file_two_classes)
_data_case("data-images", "images-copy-two-classes", "{file}", "image_folder", _copy_two_classes)
_data_case("data-images", "images-hardlink-two-classes", "{file}", "image_folder", _hardlink_two_classes)
_data_case("data-images", "images-broken-link", "{file}", "image_folder", _broken_link)
_data_case("data-images", "images-loop-and-duplicate", "{file}", "image_folder", _loop_and_dup)


def _test_overlap(tmp, link):
    train, test = tmp / "files", tmp / "test"
    _images(train, per_class=3)
    _images(test, per_class=1, classes=("cat", "ant", "bee"))
    for p in (test / "ant").iterdir():
        p.unlink()
    src = train / "ant" / "2.png"
    if link:
        (test / "ant" / "leak.png").symlink_to(src)
    else:
        (test / "ant" / "leak.png").write_bytes(src.read_bytes())
    data = raw(data={"name": "image_folder", "path": str(train), "kwargs": {"test_path": str(test)}},
               student={"name": "mlp", "kwargs": {"hidden": [8]}},
               teacher={"name": "mlp", "kwargs": {"hidden": [8]}, "train": {"epochs": 1}})
    return "cli", run_args(tmp, data), str(test / "ant" / "leak.png")


CASES.append(Case("images-test-copy-of-train", "data-images", lambda tmp: _test_overlap(tmp, False)))
CASES.append(Case("images-test-link-to-train", "data-images", lambda tmp: _test_overlap(tmp, True)))

# ----------------------------------------------------------------------------- splits and labels


def _labels(id, needle, factory):
    cli("labels", id, needle, {"data": {"name": f"_malformed_data:{factory}"},
                               "teacher": {"name": "mlp", "kwargs": {"hidden": [8]}, "train": {"epochs": 1}}})


_labels("empty-train", "empty_train/train has no samples", "empty_train")
_labels("empty-test", "empty_test/test has no samples", "empty_test")
_labels("empty-val", "has no samples", "empty_val")
_labels("string-targets", "target 'cat'", "string_targets")
_labels("one-hot-targets", "one-hot or multi-label", "multi_label_targets")
_labels("fractional-targets", "not a class index", "float_targets")
_labels("test-label-out-of-range", "the test split", "test_label_out_of_range")
_labels("val-label-out-of-range", "the val split", "val_label_out_of_range")
_labels("negative-label", "label -3", "negative_label")
_labels("train-label-out-of-range", "label 3 (sample 5)", "train_label_out_of_range")
_labels("stream-label-out-of-range", "label 5 (sample 6)", "stream_label_out_of_range")
_labels("endless-stream-no-budget", "train.max_steps", "endless")
_api("api-empty-train", "no samples", lambda: _distill(data=(torch.zeros(0, 8), torch.zeros(0).long())))
_api("api-val-label-out-of-range", "val_data", lambda: _distill(
    val_data=(torch.randn(8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 5])), epochs=1))
_api("api-fractional-targets", "not a class index", lambda: _distill(
    data=(torch.randn(16, 8), torch.rand(16)), epochs=1))
_api("api-endless-no-budget", "train.max_steps", lambda: _distill(
    data=_endless(), val_data=_tiny(), epochs=1))


def _endless():
    from _malformed_data import Endless

    return Endless(dim=8)

# ----------------------------------------------------------------------------- non-finite numbers


def _nf(id, needle, changes):
    cli("non-finite", id, needle, changes)


_nf("lr-inf", "train.lr", {"train__lr": float("inf")})
_nf("lr-nan", "train.lr", {"train__lr": float("nan")})
_nf("weight-decay-inf", "train.weight_decay", {"train__weight_decay": float("inf")})
_nf("teacher-lr-nan", "teacher.train.lr", {"teacher__train__lr": float("nan")})
_nf("kd-temperature-inf", "method.params.temperature", {"method": {"name": "kd", "params": {"temperature": float("inf")}}})
_nf("kd-temperature-nan", "method.params.temperature", {"method": {"name": "kd", "params": {"temperature": float("nan")}}})
_nf("kd-alpha-nan", "method.params.alpha", {"method": {"name": "kd", "params": {"alpha": float("nan")}}})
_nf("dml-temperature-inf", "method.params", {"method": {"name": "dml", "params": {"temperature": float("inf")}}})
_nf("one-temperature-inf", "method.params.temperature", {"method": {"name": "one", "params": {"temperature": float("inf")}}})
_nf("clip-inf", "train.clip_grad_norm", {"train__clip_grad_norm": float("inf")})
_api("api-temperature-inf", "method.params.temperature", lambda: _distill(temperature=float("inf")))
_api("api-lr-nan", "train.lr", lambda: _distill(lr=float("nan")))
_argv("override-temperature-inf", "method.params.temperature", ["run", "{cfg}", "--quiet",
                                                                 "method.params.temperature=.inf"])

# ----------------------------------------------------------------------------- seeds
cli("seeds", "seed-negative", "seed", {"seed": -1})
cli("seeds", "split-seed-negative", "data.split_seed", {"data__split_seed": -1})
cli("seeds", "fields-seed-negative", "data.fields.noise.seed", {"data__fields": {"noise": {"rate": 0.2, "seed": -4}}})
cli("seeds", "seed-fraction", "seed", {"seed": 1.5})
_argv("override-seed-negative", "seed", ["run", "{cfg}", "--quiet", "seed=-7"])
_api("api-seed-negative", "seed", lambda: _distill(seed=-1, epochs=1))

# ----------------------------------------------------------------------------- YAML size and shape


def _bomb(levels=9, fan=9):
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan) + "]"]
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * fan) + "]")
    return "\n".join(lines)


_BOMB = _bomb()  # 9**9 = 387 million values once expanded
cli("yaml", "alias-bomb", "alias bomb", text=_BOMB + "\nname: t\nstudent: {name: mlp, kwargs: {hidden: *l8}}\n")
cli("yaml", "alias-bomb-unused", "alias bomb", text=_BOMB + "\nname: t\n")
cli("yaml", "deep-lists", "nests", text="name: t\nstudent: {name: mlp, kwargs: {hidden: " + "[" * 500 + "]" * 500 + "}}\n")
cli("yaml", "deep-mappings", "nests", text="name: t\nx: " + "{a: " * 300 + "1" + "}" * 300 + "\n")
cli("yaml", "self-reference", "refers to", text="name: t\nstudent: &s {name: mlp, kwargs: {hidden: *s}}\n")
cli("yaml", "self-reference-list", "refers to", text="name: t\ntrain: {milestones: &m [1, *m]}\n")
_argv("override-alias-bomb", "alias bomb", ["run", "{cfg}", "--quiet",  # braces doubled for format()
                                            "student.kwargs={{" + _bomb(7, 9).replace("\n", ", ") + "}}"])
_argv("override-deep", "nests", ["run", "{cfg}", "--quiet", "student.kwargs.hidden=" + "[" * 200 + "]" * 200])

# ----------------------------------------------------------------------------- trackers
cli("trackers", "log-with-unknown", "train.log_with", {"train__log_with": ["tensorbored"]})
cli("trackers", "teacher-log-with-unknown", "teacher.train.log_with: unknown tracker 'bogus'",
    {"teacher__train__log_with": ["bogus"]})
cli("trackers", "teacher-log-with-number", "teacher.train.log_with", {"teacher__train__log_with": [3]})
cli("trackers", "teacher-log-with-string", "teacher.train.log_with", {"teacher__train__log_with": "wandb"})
if not any(__import__("importlib").util.find_spec(m) for m in ("aim",)):
    cli("trackers", "teacher-log-with-not-installed", "teacher.train.log_with: tracker 'aim' needs",
        {"teacher__train__log_with": ["aim"]})

# ----------------------------------------------------------------------------- eval and export
_EVAL_RUN: list[Path] = []


def _eval_run() -> Path:
    """One finished run folder (trained once, outside the cases' folders) for eval/export."""
    if not _EVAL_RUN:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="joryu-eval-run-"))
        cfg = folder / "c.yaml"
        cfg.write_text(yaml.safe_dump({**BASE, "output_dir": str(folder / "runs")}))
        assert main(["run", str(cfg), "--out", str(folder / "run"), "--quiet"]) == 0
        _EVAL_RUN.append(folder / "run")
    return _EVAL_RUN[0]


def _cmd(id, needle, argv, run=False):
    def build(tmp):
        target = str(_eval_run()) if run else str(tmp / "no-run")
        return "cli", [a.format(run=target, tmp=tmp) for a in argv], needle
    CASES.append(Case(id, "eval-export", build))


_cmd("eval-batch-size-zero", "--batch-size", ["eval", "{run}", "--batch-size", "0"])
_cmd("eval-batch-size-negative", "--batch-size", ["eval", "{run}", "--batch-size=-3"])
_cmd("eval-batch-size-text", "--batch-size", ["eval", "{run}", "--batch-size", "many"])
_cmd("eval-split-unknown", "--split must be test, val or train", ["eval", "{run}", "--split", "dev",
                                                                   "--out", "{tmp}/e"], run=True)
_cmd("eval-split-empty", "has no samples", ["eval", "{run}", "--split", "val", "--data", "mnist1d",
                                            "--data-kwarg", "num_samples=20", "--out", "{tmp}/e"], run=True)
_cmd("eval-data-too-small", "num_samples must be at least 10", ["eval", "{run}", "--data", "mnist1d",
                                                                "--data-kwarg", "num_samples=5", "--out",
                                                                "{tmp}/e"], run=True)
_cmd("eval-model-without-weights", "--weights", ["eval", "--model", "mlp", "--data", "mnist1d"])
_cmd("export-format-unknown", "unknown export format 'tflite'", ["export", "{run}", "--format", "tflite",
                                                                  "--out", "{tmp}/x.tflite"], run=True)
_cmd("export-input-shape-text", "--input-shape", ["export", "--model", "mlp", "--weights", "{tmp}/w.pt",
                                                  "--input-shape", "a,b", "--out", "{tmp}/x.onnx"])
_cmd("export-input-shape-zero", "--input-shape", ["export", "--model", "mlp", "--weights", "{tmp}/w.pt",
                                                  "--input-shape", "0,40", "--out", "{tmp}/x.onnx"])
_cmd("export-input-shape-negative", "--input-shape", ["export", "--model", "mlp", "--weights", "{tmp}/w.pt",
                                                      "--input-shape=-1,40", "--out", "{tmp}/x.onnx"])
_cmd("export-opset-text", "--opset", ["export", "{run}", "--opset", "latest"])

# ----------------------------------------------------------------------------- disk full, size limits


def _fsync_fails(pattern: str, err: int):
    """``os.fsync`` that fails with ``err`` for files whose name matches ``pattern`` (how a full
    disk shows up when the data reach it)."""
    import errno as _errno  # noqa: F401
    from fnmatch import fnmatch

    real = os.fsync

    def fsync(fd):
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            name = ""
        if fnmatch(name, pattern):
            raise OSError(err, os.strerror(err))
        return real(fd)
    return fsync


def _disk(id, needle, pattern, err, keeps_run=True, argv=None):
    def build(tmp):
        args = argv(tmp) if argv else run_args(tmp)
        return "patch", (args, [(os, "fsync", _fsync_fails(pattern, err))]), needle.format(tmp=tmp)
    CASES.append(Case(id, "disk", build, keeps_run))


_disk("enospc-config-yaml", "{tmp}/run/config.yaml: the disk is full", ".config.yaml.*.tmp", errno.ENOSPC,
      keeps_run=False)
_disk("enospc-checkpoint-optim", "optim.pt: the disk is full", ".optim.pt.*.tmp", errno.ENOSPC)
_disk("edquot-checkpoint-weights", "model.safetensors: the disk quota", ".model.safetensors.*.tmp", errno.EDQUOT)
_disk("enospc-metrics-line", "metrics.jsonl: the disk is full", "metrics.jsonl", errno.ENOSPC)
_disk("efbig-student-weights", "{tmp}/run/student.safetensors: the file-size limit", ".student.safetensors.*.tmp",
      errno.EFBIG)
_disk("enospc-report", "{tmp}/run/report.md: the disk is full", ".report.md.*.tmp", errno.ENOSPC)
_disk("enospc-eval-json", "{tmp}/e/eval.json: the disk is full", ".eval.json.*.tmp", errno.ENOSPC,
      argv=lambda tmp: ["eval", str(_eval_run()), "--out", str(tmp / "e")])


def _fsize(limit):
    def build(tmp):
        return "fsize", (run_args(tmp), limit), "the file-size limit (ulimit -f) was reached"
    return build


CASES.append(Case("rlimit-fsize-small", "disk", _fsize(3000), True))
CASES.append(Case("rlimit-fsize-medium", "disk", _fsize(20000), True))


# ----------------------------------------------------------------------------- the runner


def snapshot(folder: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and os.access(p, os.R_OK):
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def run_in_process(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse --help/--version only
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(c, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.chdir(tmp_path)
    kind, payload, needle = c.build(tmp_path)
    before = snapshot(tmp_path)
    if kind == "api":
        with pytest.raises(JoryuError) as e:
            payload()
        err = f"joryu: error: {e.value}\n"
        code = 2
    elif kind in ("sub", "fsize"):
        argv, env = payload if kind == "sub" else (payload[0], {})
        limit = payload[1] if kind == "fsize" else None

        def cap():  # a file-size limit (ulimit -f) for the child only
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        proc = subprocess.run([sys.executable, "-m", "joryu", *argv], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, preexec_fn=cap if limit else None,
                              env={**os.environ, "JORYU_THREADS": "1", "PYTHONPATH": str(ROOT), **env})
        code, err = proc.returncode, proc.stderr
    else:
        if kind == "env":
            argv, env = payload
            for k, v in env.items():
                monkeypatch.setenv(k, v)
        elif kind == "patch":
            argv, patches = payload
            for obj, name, value in patches:
                monkeypatch.setattr(obj, name, value)
        elif kind == "readonly":
            argv = payload
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p).endswith("/ro")
                                else real(p, mode, *a, **k))
        else:
            argv = payload
        code, err = run_in_process(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {err[-3000:]}"
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    assert lines[0].startswith("joryu: error:"), lines[0]
    assert needle in lines[0], (needle, lines[0])
    after = snapshot(tmp_path)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"files changed or removed: {changed}"
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "files" / "PWNED").exists()
    if kind != "api" and c.category not in ("run-folder",) and "--resume" not in str(payload):
        # a run that fails its checks leaves no run folder behind (no -2 for the next one)
        assert not (tmp_path / "run").exists() or c.category == "training" or c.keeps_run
        assert not (tmp_path / "runs").exists()
    torn = [str(p) for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or
            p.name.startswith((".tmp-", ".trash-", ".run.")) or ".new-" in p.name]
    assert not torn, f"half-written files kept: {torn}"


def test_the_table_is_big_enough():
    counts = Counter(c.category for c in CASES)
    assert len(CASES) >= 100, counts
    assert len({c.id for c in CASES}) == len(CASES)
    for needed in ("config", "model", "data", "data-cifar", "data-idx", "data-images", "checkpoint",
                   "preflight", "run-folder", "command-line", "subprocess", "api", "fields", "transforms",
                   "labels", "non-finite", "seeds", "yaml", "trackers", "eval-export", "disk"):
        assert counts[needed] > 0, needed


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path):
    """Measured by size from the parser's events: refusing it allocates little (expanded, the
    9-level bomb would be 387 million values)."""
    import tracemalloc

    from joryu.config import load_yaml
    from joryu.errors import ConfigError

    p = tmp_path / "bomb.yaml"
    p.write_text(_BOMB + "\nname: t\n")
    tracemalloc.start()
    with pytest.raises(ConfigError, match="alias bomb"):
        load_yaml(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000, peak
