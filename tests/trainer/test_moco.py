"""MoCo v2 + non-semantic negatives: the paper's formula, the queue, split (shuffle) BN, momentum."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsneg.trainer.methods.moco import MoCo, SplitBatchNorm2d, build_backbone, shuffle_across_splits


def linear_moco(dim=8, K=12, alpha=2.0, T=0.2):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, dim))  # noqa: E731
    return MoCo(make(), make(), dim=dim, K=K, m=0.99, T=T, alpha=alpha)


def test_logits_and_loss_match_the_papers_formula():
    model = linear_moco()
    im_q, im_k, im_t = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.rand(4, 2, 3, 4, 4)
    queue = model.queue.clone()
    encode = lambda x: F.normalize(model.encoder_q(x), dim=1)  # noqa: E731  (key encoder == query encoder at start)
    q, k = encode(im_q), encode(im_k)
    t = [encode(im_t[:, n]) for n in range(2)]
    expected = (
        torch.cat(
            [(q * k).sum(1, keepdim=True), q @ queue]
            + [2.0 * (q * tn).sum(1, keepdim=True) for tn in t],
            1,
        )
        / 0.2
    )
    logits, labels = model.logits(im_q, im_k, im_t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(logits, expected, atol=1e-6) and torch.equal(
        labels, torch.zeros(4, dtype=torch.long)
    )
    manual = -torch.log(torch.exp(expected[:, 0]) / torch.exp(expected).sum(1)).mean()
    assert torch.allclose(F.cross_entropy(logits, labels), manual, atol=1e-6)


def test_logits_in_bf16_autocast_stay_within_bf16_tolerance_of_the_formula():
    model = linear_moco()
    im_q, im_k, im_t = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.rand(4, 1, 3, 4, 4)
    reference, _ = linear_moco().logits(
        im_q, im_k, im_t, generator=torch.Generator().manual_seed(0)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model.logits(im_q, im_k, im_t, generator=torch.Generator().manual_seed(0))
    assert logits.dtype == torch.bfloat16 and torch.allclose(
        logits.float(), reference, atol=0.1, rtol=0.02
    )
    assert (
        model.queue.dtype == torch.float32 and int(model.queue_ptr) == 4
    )  # bf16 keys enqueued into the fp32 queue


def test_queue_enqueues_keys_only_and_wraps():
    model = linear_moco(K=12)
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(4, 3, 4, 4) for _ in range(4)]
    for i, x in enumerate(batches):
        model.logits(x, x, torch.rand(4, 1, 3, 4, 4), generator=g)
        k = F.normalize(model.encoder_k(x), dim=1)
        slot = (4 * i) % 12
        assert torch.allclose(
            model.queue[:, slot : slot + 4], k.T, atol=1e-6
        )  # keys, never the negatives
        assert int(model.queue_ptr) == (slot + 4) % 12


def test_momentum_update_is_m_k_plus_one_minus_m_q():
    model = linear_moco()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    q = [p.detach().clone() for p in model.encoder_q.parameters()]
    k = [p.detach().clone() for p in model.encoder_k.parameters()]
    model._momentum_update_key_encoder()
    for p_k, k0, q0 in zip(model.encoder_k.parameters(), k, q):
        assert torch.allclose(p_k, 0.99 * k0 + 0.01 * q0, atol=1e-7)


def test_split_batchnorm_normalises_each_sub_batch_separately():
    bn = SplitBatchNorm2d(3, num_splits=2).train()
    x = torch.randn(8, 3, 5, 5)
    x[4:] = 10 + 5 * x[4:]  # sub-batch b is the b-th chunk along N
    y = bn(x)
    for half in (y[:4], y[4:]):
        assert (
            half.mean().abs() < 1e-5
            and (half.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-3
        )


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_split_batchnorm_equals_batchnorm_on_each_sub_batch(memory_format):
    """Forward, backward (input, weight, bias) and running statistics, in both memory formats."""
    torch.manual_seed(0)
    splits, c = 4, 6
    split = SplitBatchNorm2d(c, num_splits=splits).train()
    with torch.no_grad():
        split.weight.uniform_(0.5, 2)
        split.bias.uniform_(-1, 1)
    plain = [nn.BatchNorm2d(c).train() for _ in range(splits)]
    for bn in plain:
        bn.load_state_dict(split.state_dict(), strict=False)
    x = (torch.randn(16, c, 7, 5) * torch.arange(1, 17).view(-1, 1, 1, 1)).contiguous(
        memory_format=memory_format
    )
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    grad = torch.randn(16, c, 7, 5).contiguous(memory_format=memory_format)

    y = split(x)
    y.backward(grad)
    y_ref = torch.cat([bn(part) for bn, part in zip(plain, x_ref.chunk(splits))])
    y_ref.backward(grad)

    assert y.is_contiguous(memory_format=memory_format)
    assert torch.allclose(y, y_ref, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
    assert torch.allclose(split.weight.grad, sum(bn.weight.grad for bn in plain), atol=1e-4)
    assert torch.allclose(split.bias.grad, sum(bn.bias.grad for bn in plain), atol=1e-4)
    assert torch.allclose(
        split.running_mean, torch.stack([bn.running_mean for bn in plain]).mean(0), atol=1e-6
    )
    assert torch.allclose(
        split.running_var, torch.stack([bn.running_var for bn in plain]).mean(0), atol=1e-6
    )
    split.eval()  # evaluation uses the running statistics over the whole batch
    assert torch.allclose(
        split(x),
        F.batch_norm(x, split.running_mean, split.running_var, split.weight, split.bias),
        atol=1e-6,
    )


def test_split_batchnorm_refuses_an_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible by bn_splits 4"):
        SplitBatchNorm2d(3, num_splits=4).train()(torch.randn(6, 3, 2, 2))


@pytest.mark.parametrize("n,splits", [(8, 2), (16, 4), (64, 8), (24, 3), (5, 1)])
def test_key_shuffle_never_leaves_a_key_in_its_querys_sub_batch(n, splits):
    g = torch.Generator().manual_seed(0)
    orders = [shuffle_across_splits(n, splits, g) for _ in range(20)]
    chunk = n // splits
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))  # a permutation
        if splits > 1:
            assert (
                (order // chunk) != (torch.arange(n) // chunk)
            ).all()  # slot's sub-batch != sample's own
    assert (
        len({tuple(o.tolist()) for o in orders}) >= 15
    )  # and random (a few repeats among small n)


def test_moco_shuffles_keys_across_its_encoders_bn_sub_batches():
    """With split BN a key is normalised in a sub-batch that holds none of its query's sub-batch."""
    torch.manual_seed(0)
    encoders = [
        build_backbone("resnet18", dim=16, bn_splits=2, small_images=True) for _ in range(2)
    ]
    model = MoCo(*encoders, dim=16, K=16)
    assert model.bn_splits == 2
    seen = []
    model.encoder_k.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].detach().clone())
    )
    im = torch.rand(8, 3, 16, 16)
    model.logits(im, im, generator=torch.Generator().manual_seed(1))
    (keys,) = seen
    rows = [next(i for i in range(8) if torch.equal(keys[slot], im[i])) for slot in range(8)]
    assert all(row // 4 != slot // 4 for slot, row in enumerate(rows))


def test_the_method_interface_returns_infonce_and_metrics_that_leave_ns_logits_out_of_acc():
    im_q, im_k, im_t = torch.rand(4, 3, 4, 4), torch.rand(4, 3, 4, 4), torch.rand(4, 2, 3, 4, 4)
    logits, labels = linear_moco().logits(im_q, im_k, im_t, generator=torch.Generator())
    loss, metrics = linear_moco()(im_q, im_k, im_t, generator=torch.Generator())
    assert torch.allclose(loss, F.cross_entropy(logits, labels), atol=1e-6)
    regular, ns = logits[:, 1:13], logits[:, 13:]  # K = 12 queue logits, then 2 NS logits
    assert metrics["acc"] == (logits[:, 0] > regular.amax(dim=1)).float().mean()
    assert metrics["ns_outrank"] == (ns > logits[:, :1]).float().mean()
