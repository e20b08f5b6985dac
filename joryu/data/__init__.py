"""Datasets: built-in (offline) data, file loaders, on-device tensors and loaders."""

from joryu.data import paired  # noqa: F401,E402  (registers the paired two-modality datasets)
from joryu.data.assemble import load_data  # noqa: E402  (above sources and fields)
from joryu.data.core import (
    Augment,
    TensorData,
    TensorLoader,
    apply_augment,
    apply_augment_keyed,
    epoch_batches,
    split_validation,
)
from joryu.data.imperfect import IGNORE_INDEX, degraded_view, hide_labels, labeled_per_class
from joryu.data.noise import (
    add_label_noise,
    check_noise_matrix,
    clean_mask,
    inject_noise,
    mark_clean,
    noise_matrix,
    observed_noise_matrix,
)
from joryu.data.registry import DataBundle, available, describe, load, register_dataset
from joryu.data.sources import (
    LoaderOptions,
    StreamData,
    StreamLoader,
    as_source,
    bundle_from,
    example_batch,
    load_factory,
    split_any,
)
from joryu.data.transforms import available_transforms, build_transform

__all__ = [
    "Augment", "DataBundle", "StreamLoader", "TensorData", "TensorLoader", "apply_augment", "apply_augment_keyed",
    "available", "describe", "epoch_batches", "load", "register_dataset", "split_validation",
    "IGNORE_INDEX", "degraded_view", "hide_labels", "labeled_per_class",
    "add_label_noise", "check_noise_matrix", "clean_mask", "inject_noise", "mark_clean", "noise_matrix",
    "observed_noise_matrix", "LoaderOptions", "StreamData", "as_source", "bundle_from", "example_batch", "load_data",
    "load_factory", "split_any", "available_transforms", "build_transform",
]

from joryu.data import distilled as _distilled  # noqa: E402,F401  (registers the 'distilled' dataset)
from joryu.data import mnist100 as _mnist100  # noqa: E402,F401  (registers the 'mnist100' dataset)
from joryu.data import text as _text  # noqa: E402,F401  (registers the token and pixel datasets)
