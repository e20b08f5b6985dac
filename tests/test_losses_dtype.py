"""Feature losses compute in the caller's dtype."""

import torch


def test_fsp_hint_and_feature_losses_keep_the_callers_dtype():
    from joryu.losses import feature_l2_loss, fsp_loss, fsp_matrix, hint_loss

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    b = a + 1e-9 * torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)  # a float32-invisible change
    ga, gb = fsp_matrix(a, a), fsp_matrix(b, b)
    for loss in (fsp_loss([ga], [gb]), hint_loss(b, a), feature_l2_loss(b, a)):
        assert loss.dtype == torch.float64
        assert 0 < float(loss) < 1e-12  # float32 would round these differences to 0 or to ~1e-7 noise
    h = a.to(torch.bfloat16)
    assert hint_loss(h, h).dtype == torch.float32 and feature_l2_loss(h, h).dtype == torch.float32
    assert fsp_loss([fsp_matrix(h, h)], [fsp_matrix(h, h)]).dtype == torch.float32
