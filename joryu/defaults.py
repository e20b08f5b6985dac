"""The main job that ``joryu`` runs with no arguments: Hinton KD on built-in MNIST-1D."""

MAIN_JOB = {
    "name": "kd-mnist1d",
    "seed": 0,
    "data": {"name": "mnist1d", "val_fraction": 0.1, "augment": {"shift": 0}},
    "teacher": {"name": "cnn1d", "kwargs": {"width": 32},
                "train": {"epochs": 30, "batch_size": 128, "optimizer": "adam", "lr": 0.003,
                          "weight_decay": 0.0001, "scheduler": "cosine"}},
    "student": {"name": "mlp", "kwargs": {"hidden": [64, 64]}},
    "method": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
    "train": {"epochs": 40, "batch_size": 128, "optimizer": "adam", "lr": 0.002,
              "weight_decay": 0.0, "scheduler": "cosine"},
    "baseline": True,
    "output_dir": "runs",
}
