import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorData, TensorLoader
from joryu.losses import confident_pseudo_labels, mix_counts
from joryu.methods import get_method
from joryu.methods.data_distillation import (
    MixedBatchDistiller,
    ensemble_probs,
    labeled_split,
    transforms_for,
)
from joryu.reproduce import run_reproduction
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher, TransformEnsembleTeacher


def test_threshold_hits_the_target_kept_count_and_labels_are_hard():
    g = torch.Generator().manual_seed(0)
    probs = torch.randn(1000, 7, generator=g).softmax(-1)
    for q in (0.05, 0.5, 0.8, 1.0):
        keep, labels, tau = confident_pseudo_labels(probs, q)
        assert int(keep.sum()) == round(q * 1000)
        conf = probs.max(-1).values
        assert bool((conf[keep] >= tau).all()) and bool((conf[~keep] <= tau).all())
        assert labels.dtype == torch.long and torch.equal(labels, probs.argmax(-1))
    # ties at the threshold still give the exact count
    keep, _, _ = confident_pseudo_labels(torch.full((10, 2), 0.5), 0.3)
    assert int(keep.sum()) == 3


def test_mix_counts_and_the_mixed_batch_ratio_is_exact(tiny_data):
    assert mix_counts(128, 0.6) == (77, 51)
    assert mix_counts(10, 0.5) == (5, 5)
    real = tiny_data.subset(torch.arange(30))
    pseudo = tiny_data.subset(torch.arange(30, 240))
    d = MixedBatchDistiller(nn.Linear(8, 3), real, 0.6, batch_size=128)
    n_real, n_pseudo = mix_counts(128, 0.6)
    seen = []
    loader = TensorLoader(pseudo, n_pseudo, shuffle=True, seed=0)
    for batch in loader.iterate(0):
        out = d.training_step(batch)
        seen.append(d.last_mix)
        if len(batch["target"]) == n_pseudo:
            assert d.last_mix == (n_real, n_pseudo)
            assert float(out["real_share"]) == pytest.approx(77 / 128)
    assert len(seen) == len(loader)
    # real samples come in passes over A without replacement
    d2 = MixedBatchDistiller(nn.Linear(8, 3), real, 0.6, 10, seed=3)
    first = torch.cat([d2.draw_real(7) for _ in range(4)] + [d2.draw_real(2)])
    assert sorted(first.tolist()) == list(range(30))


def test_labeled_split_is_stratified_seeded_or_read_from_the_data(tiny_data):
    lab, unl = labeled_split(tiny_data, 0, per_class=5, fraction=0.1)
    assert len(lab) == 15 and len(set(lab.tolist()) & set(unl.tolist())) == 0 and len(lab) + len(unl) == 240
    assert torch.equal(lab, labeled_split(tiny_data, 0, 5, 0.1)[0])
    assert not torch.equal(lab, labeled_split(tiny_data, 1, 5, 0.1)[0])
    marked = tiny_data.with_tensors(labeled=torch.arange(240) < 20)
    lab2, _ = labeled_split(marked, 0, 5, 0.1)
    assert lab2.tolist() == list(range(20))


def test_ensemble_probs_average_the_views_in_the_original_frame():
    x = torch.randn(20, 1, 6, 6)
    data = TensorData({"input": x, "target": torch.zeros(20, dtype=torch.long)}, 3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    ts = transforms_for((1, 6, 6), 2, 2, flip=True, scales=[1.2])
    assert len(ts) == 11
    p = ensemble_probs(TransformEnsembleTeacher(FrozenTeacher(net), ts), data, batch_size=7)
    want = torch.stack([net(t.apply(x)).softmax(-1) for t in ts]).mean(0)
    torch.testing.assert_close(p, want)


def test_method_runs_two_stages_and_retrains_from_the_initial_weights(tiny_data):
    m = get_method("data_distillation", {"labeled_per_class": 10, "shifts": 1, "shift_step": 1,
                                         "keep_fraction": 0.5, "supervised_epochs": 5})
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    init = {k: v.clone() for k, v in student.state_dict().items()}
    stages = m.stages()
    assert [s.name for s in stages] == ["supervised", "retrain"]
    orig_build = stages[1].build
    at_start = {}

    def spy(ctx):
        d = orig_build(ctx)
        at_start.update({k: v.clone() for k, v in d.student.state_dict().items()})
        return d

    stages[1].build = spy
    m.stages = lambda: stages
    net, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=2, batch_size=40), run_dir=None, seed=0, augment=None, progress=False)
    for k in init:
        torch.testing.assert_close(at_start[k], init[k])  # a fresh student, not the stage-1 model
    stats = res["retrain"].distiller.pseudo_stats
    assert stats["kept"] == round(0.5 * (240 - 30)) and stats["transforms"] == 3
    sup = res["supervised"].distiller.student
    assert sup is not net
    # stage 1 saw only the 30 labelled samples: one step per epoch at batch 40
    assert res["supervised"].history[-1]["step"] == 5
    n_real, n_pseudo = mix_counts(40, 0.6)
    assert res["retrain"].history[0]["step"] == -(-stats["kept"] // n_pseudo)


def test_quick_reproduction_reports_its_claims(tmp_path):
    md = run_reproduction("data_distillation", quick=True, out_dir=tmp_path, progress=False)
    assert md.read_text().count("- **") >= 2


@pytest.mark.parametrize("budget,steps", [("epochs", 2), ("updates", 2 * 6)])
def test_stage_one_budget_is_the_runs_epochs_over_the_labelled_part_or_the_runs_updates(tiny_data, budget, steps):
    # 240 samples, 30 labelled, batch 40: two epochs over A are 2 updates; the run's own budget
    # over the whole data is 2 x ceil(240 / 40) = 12, which "updates" gives stage 1 (and its baseline)
    m = get_method("data_distillation", {"labeled_per_class": 10, "shifts": 0, "supervised_budget": budget})
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    _, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=None,
                        train_cfg=TrainConfig(epochs=2, batch_size=40), run_dir=None, seed=0, augment=None,
                        progress=False)
    assert res["supervised"].history[-1]["step"] == steps
