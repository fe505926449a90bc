"""MoCo v2 aug-plus, batched: per-sample parameters equal torchvision's per-image transforms,
and the texture negative gets exactly its query's augmentation."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from nsneg.trainer.augment import (
    MEAN,
    STD,
    adjust_hue,
    augment,
    gaussian_blur,
    hsv_to_rgb,
    rgb_to_hsv,
    sample_params,
)


def test_texture_gets_exactly_its_querys_augmentation():
    x = torch.rand(6, 3, 32, 32)
    params = sample_params(6, torch.Generator().manual_seed(3))
    assert torch.equal(augment(x, params), augment(x.clone(), params))
    other = sample_params(6, torch.Generator().manual_seed(4))
    assert not torch.allclose(augment(x, params), augment(x, other))


def test_augment_leaves_its_input_untouched():
    x = torch.rand(8, 3, 16, 16)
    before = x.clone()
    augment(x, sample_params(8, torch.Generator().manual_seed(0)))
    assert torch.equal(x, before)


def reference(x: torch.Tensor, p) -> torch.Tensor:
    """torchvision's public functionals, one image at a time, in each sample's own op order."""
    out = []
    for i, img in enumerate(x):
        if p.jitter[i]:
            for op in p.order[i].tolist():
                f = float(p.factors[i, op])
                img = [
                    TF.adjust_brightness,
                    TF.adjust_contrast,
                    TF.adjust_saturation,
                    TF.adjust_hue,
                ][op](img, f)
        if p.gray[i]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p.flip[i]:
            img = TF.horizontal_flip(img)
        out.append(img)
    return (torch.stack(out) - MEAN) / STD


def test_batched_jitter_grey_and_flip_equal_torchvisions_per_image_transforms():
    x = torch.rand(64, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    p = sample_params(64, torch.Generator().manual_seed(1))
    p.blur[:] = False  # blur is ours (kernel ~10 % of the image), tested below
    assert p.jitter.any() and (~p.jitter).any() and p.gray.any() and p.flip.any()
    assert len({tuple(o) for o in p.order[p.jitter].tolist()}) > 10  # many different op orders
    assert torch.allclose(augment(x, p), reference(x, p), atol=2e-5)


def test_hsv_round_trip_and_hue_rotation():
    x = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-6)
    shifts = torch.tensor([-0.5, -0.1, 0.0, 0.3])
    expected = torch.stack([TF.adjust_hue(img, float(s)) for img, s in zip(x, shifts)])
    assert torch.allclose(adjust_hue(x, shifts), expected, atol=1e-5)


def test_blur_uses_each_samples_own_sigma():
    x = torch.zeros(2, 3, 21, 21)
    x[:, :, 10, 10] = 1.0  # an impulse: the output is the kernel
    y = gaussian_blur(x, torch.tensor([0.5, 2.0]))
    assert torch.allclose(y.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5)  # kernels sum to 1
    assert y[0, 0, 10, 10] > y[1, 0, 10, 10] > 0  # wider sigma, lower peak
    assert torch.allclose(y[:, :, 10], y[:, :, :, 10], atol=1e-6)  # separable and symmetric


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_augment_runs_in_the_training_precisions(dtype):
    x = torch.rand(8, 3, 16, 16).to(dtype)
    y = augment(x, sample_params(8, torch.Generator().manual_seed(0)))
    assert y.dtype == dtype and y.shape == x.shape and torch.isfinite(y.float()).all()
