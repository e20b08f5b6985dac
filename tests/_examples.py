"""Every registered method's example config, shared by the one-loop test and the matrix."""

EXAMPLE = {  # method -> its example config (every registered method has one)
    "born_again": "born_again_mnist5k.yaml",
    "cross_modal": "cross_modal_digits.yaml",
    "data_distillation": "data_distillation_mnist5k.yaml",
    "dataset_distillation": "dataset_distillation_digits.yaml",
    "dml": "dml_mnist5k.yaml",
    "dropout_distillation": "dropout_distillation_mnist1d.yaml",
    "fitnets": "fitnets_mnist5k.yaml",
    "fsp": "fsp_digits.yaml",
    "gkd": "gkd_gpt2_lm.yaml",
    "generalized_distillation": "generalized_distillation_digits.yaml",
    "kd": "kd_digits.yaml",
    "knowledge_concentration": "knowledge_concentration_grouped.yaml",
    "meal": "meal_mnist1d.yaml",
    "noisy_label_distillation": "noisy_label_distillation_mnist1d.yaml",
    "one": "one_mnist1d.yaml",
    "posterior_distillation": "posterior_distillation_digits.yaml",
    "progressive_blockwise": "progressive_blockwise_mnist1d.yaml",
    "svd_kd": "svd_kd_mnist1d.yaml",
    "supervised": "kd_digits.yaml",
}
