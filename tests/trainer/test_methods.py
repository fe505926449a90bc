"""The methods behind ``nsneg.trainer.methods``: BYOL's and SimCLR's losses equal lightly's with no
non-semantic (NS) negatives, the NS terms follow their formulas, the metrics mean what they say."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsneg.trainer.backbones import build_trunk
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import BYOL, METHODS, SimCLR
from nsneg.trainer.methods.byol import byol_loss
from nsneg.trainer.methods.simclr import nt_xent
from nsneg.trainer.negatives import contrast_metrics, nonsemantic_contrast_loss
from nsneg_testing import SMALL_METHOD

#: float32 on one thread: the same sums in another order differ by a few ulp of the loss
TOL = dict(rtol=1e-5, atol=1e-6)


def test_byol_loss_is_minus_the_mean_cosine_of_predictions_and_the_other_views_targets():
    """lightly's ``NegativeCosineSimilarity`` as its examples/pytorch/byol.py uses it, against BYOL's formula."""
    g = torch.Generator().manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(16, 32, generator=g) for _ in range(4))
    cos = lambda p, z: (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)  # noqa: E731
    expected = -(cos(p0, z1).mean() + cos(p1, z0).mean()) / 2
    assert torch.allclose(byol_loss(p0, z1, p1, z0), expected, **TOL)


def hand_written_mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """Linear - [BatchNorm1d] - ReLU - Linear, as nsneg wrote its heads before lightly's."""
    norm = [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), *norm, nn.ReLU(), nn.Linear(hidden_dim, out_dim)
    )


@pytest.mark.parametrize(
    "head", ["byol projector", "byol predictor", "simclr projector", "moco fc"]
)
def test_lightly_heads_have_the_hand_written_mlps_layers_and_outputs(head):
    """Same parameter names and shapes (a strict load), same outputs from the same weights (train mode)."""
    from nsneg.trainer.methods.moco import build_backbone

    byol = BYOL(nn.Identity(), 16, proj_hidden_dim=24, proj_dim=8, pred_hidden_dim=12)
    module, reference = {
        "byol projector": (byol.projector, hand_written_mlp(16, 24, 8, True)),
        "byol predictor": (byol.predictor, hand_written_mlp(8, 12, 8, True)),
        "simclr projector": (
            SimCLR(nn.Identity(), 16, proj_hidden_dim=24, proj_dim=8).projector,
            hand_written_mlp(16, 24, 8, False),
        ),
        "moco fc": (build_backbone("resnet18", dim=8).fc, hand_written_mlp(512, 512, 8, False)),
    }[head]
    weights = module.layers.state_dict()
    reference.load_state_dict(weights)  # strict: the same keys, each of the same shape
    x = torch.randn(6, reference[0].in_features, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(module(x), reference(x), **TOL)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_without_ns_negatives_equals_lightlys_ntxent_loss(temperature):
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(1)
    z0, z1 = (torch.randn(12, 24, generator=g) for _ in range(2))
    expected = NTXentLoss(temperature=temperature)(z0, z1)
    loss, logits, labels = nt_xent(F.normalize(z0, dim=1), F.normalize(z1, dim=1), temperature)
    assert torch.allclose(loss, expected, **TOL)
    assert logits.shape == (24, 23) and labels.tolist() == list(range(12)) * 2


def test_nt_xent_ns_negatives_enter_each_anchors_softmax_with_alpha_z_t_over_T():
    g = torch.Generator().manual_seed(2)
    z1, z2 = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2))
    t = F.normalize(torch.randn(4, 2, 8, generator=g), dim=2)
    T, alpha = 0.2, 2.0
    loss, _, _ = nt_xent(z1, z2, T, t, alpha)
    z = torch.cat([z1, z2])  # [2B, D]: anchors
    expected = []
    for i in range(8):
        j = (i + 4) % 8
        others = [k for k in range(8) if k != i]
        logits = torch.stack([z[i] @ z[k] / T for k in others])
        ns = torch.stack([alpha * z[i] @ t[i % 4, n] / T for n in range(2)])
        expected.append(-(z[i] @ z[j] / T - torch.logsumexp(torch.cat([logits, ns]), 0)))
    assert torch.allclose(loss, torch.stack(expected).mean(), **TOL)


def tiny_byol(**kwargs) -> BYOL:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8))
    return BYOL(backbone, 8, proj_hidden_dim=16, proj_dim=6, pred_hidden_dim=16, **kwargs)


def test_byol_with_no_ns_negatives_is_plain_byol_and_its_ns_term_is_moco_like():
    model = tiny_byol(alpha=2.0, T=0.2)
    g = torch.Generator().manual_seed(3)
    im_1, im_2 = torch.rand(4, 3, 4, 4, generator=g), torch.rand(4, 3, 4, 4, generator=g)
    im_ns = torch.rand(4, 2, 3, 4, 4, generator=g)
    plain, metrics = model(im_1, im_2)
    p_1, p_2 = model.predict(im_1), model.predict(im_2)  # the target equals the online net at start
    z_1, z_2 = model.target(im_1), model.target(im_2)
    assert torch.allclose(plain, byol_loss(p_1, z_2, p_2, z_1), **TOL)
    assert set(metrics) == {"acc"}
    with_ns, metrics = model(im_1, im_2, im_ns)
    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    t = n(torch.stack([model.target(im_ns[:, k]) for k in range(2)], dim=1))
    ns = (
        nonsemantic_contrast_loss(n(p_1), n(z_2), t, 2.0, 0.2)
        + nonsemantic_contrast_loss(n(p_2), n(z_1), t, 2.0, 0.2)
    ) / 2
    assert torch.allclose(with_ns, plain + ns, **TOL)
    assert torch.allclose(metrics["ns_loss"], ns, **TOL) and 0 <= metrics["ns_outrank"] <= 1


def test_nonsemantic_contrast_loss_is_the_softmax_of_the_positive_against_alpha_weighted_negatives():
    g = torch.Generator().manual_seed(4)
    a, p = (F.normalize(torch.randn(3, 5, generator=g), dim=1) for _ in range(2))
    t = F.normalize(torch.randn(3, 2, 5, generator=g), dim=2)
    pos = (a * p).sum(1) / 0.5
    neg = 3.0 * (a.unsqueeze(1) * t).sum(2) / 0.5
    expected = -(pos - torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1)).mean()
    assert torch.allclose(nonsemantic_contrast_loss(a, p, t, 3.0, 0.5), expected, **TOL)


def test_byol_target_follows_the_online_network_with_the_cosine_rising_momentum():
    model = tiny_byol(tau_base=0.9)
    assert model.tau(0.0) == pytest.approx(0.9) and model.tau(1.0) == pytest.approx(1.0)
    assert model.tau(0.5) == pytest.approx(0.95)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    online = [p.detach().clone() for p in model.backbone.parameters()]
    target = [p.detach().clone() for p in model.backbone_target.parameters()]
    model(torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), progress=0.5)
    for p_t, t0, o0 in zip(model.backbone_target.parameters(), target, online):
        assert torch.allclose(p_t, 0.95 * t0 + 0.05 * o0, atol=1e-6)
    assert all(not p.requires_grad for p in model.backbone_target.parameters())


def test_simclr_ns_negatives_leave_the_evaluated_bn_statistics_as_the_views_alone_set_them():
    torch.manual_seed(0)
    backbone, dim = build_trunk("resnet18", small_images=True)
    model = SimCLR(backbone, dim, proj_hidden_dim=16, proj_dim=8)
    g = torch.Generator().manual_seed(5)
    im_1, im_2 = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
    im_ns = torch.rand(4, 2, 3, 16, 16, generator=g)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model(im_1, im_2)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    _, metrics = model(im_1, im_2, im_ns)
    assert all(torch.equal(plain[k], v) for k, v in model.state_dict().items())
    assert set(metrics) == {"acc", "ns_outrank"}
    assert model.backbone.bn1.momentum == 0.1  # restored after the NS forwards


def test_contrast_metrics_count_instance_discrimination_and_ns_outranking_separately():
    l_pos = torch.tensor([1.0, 0.5, 0.2, 0.9])
    l_neg = torch.tensor([[0.3, 0.2], [0.6, 0.1], [0.1, 0.0], [0.95, 0.0]])
    l_ns = torch.tensor([[1.5, 0.0], [0.1, 0.2], [0.3, 0.4], [0.0, 0.0]])
    m = contrast_metrics(l_pos, l_neg, l_ns)
    assert m["acc"].item() == pytest.approx(0.5)  # samples 0 and 2: the NS logits do not count
    assert m["ns_outrank"].item() == pytest.approx(3 / 8)
    assert set(contrast_metrics(l_pos, l_neg, None)) == {"acc"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_builds_from_the_config_and_exposes_a_torchvision_backbone(method):
    config = TrainConfig(
        negatives="-", out="-", arch="resnet18", small_images=True, **SMALL_METHOD[method]
    )  # fmt: skip
    model = METHODS[method].from_config(config, bn_splits=1)
    trunk, _ = build_trunk("resnet18", small_images=True)
    assert model.backbone_state_dict().keys() == trunk.state_dict().keys()
    trained = {id(p) for m in model.trained_modules() for p in m.parameters()}
    assert all(id(p) in trained for p in model.backbone.parameters())
    assert math.isclose(config.base_lr, METHODS[method].defaults.lr_per_256 * 512 / 256)
