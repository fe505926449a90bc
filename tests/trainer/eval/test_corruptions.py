"""nsneg.trainer.eval.corruptions: every ImageNet-C corruption against its definition, and what all of them
promise (shape, range, seeding, batch independence, distortion growing with severity)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats
from skimage.color import hsv2rgb, rgb2hsv

from nsneg_testing import photo
from nsneg.trainer.eval import corruptions as C
from nsneg.trainer.eval import image_ops

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
}
BLURS = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur")


def tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Four real photos as a [4, 3, 224, 224] batch: the size ImageNet-C's parameters are made for."""
    return torch.stack([tensor(photo(name, (224, 224))) for name in PHOTOS])


def flat(value: float, size: int = 224, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 3, size, size), value)


def high_frequency_energy(x: torch.Tensor) -> float:
    """Spectral energy per value above a quarter of the sampling rate."""
    spectrum = torch.fft.rfft2(x).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2]).abs()[:, None]
    fx = torch.fft.rfftfreq(x.shape[-1])[None]
    return float(spectrum[..., (fy > 0.25) | (fx > 0.25)].sum() / x.numel())


def one_minus_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    a, b = (
        x.flatten(1) - x.flatten(1).mean(1, keepdim=True),
        y.flatten(1) - y.flatten(1).mean(1, keepdim=True),
    )
    return float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


# --------------------------------------------------------------------------- all corruptions


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_contract_and_severity_order(name, photos):
    """Same shape, float32 in [0, 1]; seeded per image (same seed, same output, in any batch);
    the distortion grows with severity: mean absolute change, or 1 - correlation for fog and frost,
    blends towards a layer whose brightness may match the photo's (severities 3 and 4 of fog
    differ in the fractal's roughness, not its strength)."""
    seeds = [11, 12, 13, 14]
    outs = [C.corrupt(photos, name, s, seeds) for s in C.SEVERITIES]
    for out in outs:
        assert out.shape == photos.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(C.corrupt(photos, name, 3, seeds), outs[2])
    assert torch.allclose(C.corrupt(photos[2:3], name, 3, seeds[2:3]), outs[2][2:3], atol=1e-5)
    if name in RANDOM:
        assert not torch.equal(C.corrupt(photos, name, 3, [21, 22, 23, 24]), outs[2])

    if name in ("fog", "frost"):
        d = [one_minus_correlation(photos, out) for out in outs]
    else:
        d = [float((out - photos).abs().mean()) for out in outs]
    assert d[0] > 0.005, d
    if (
        name == "elastic_transform"
    ):  # the reference table: two large affine warps, then three local wobbles
        assert d[0] < d[1] and d[2] < d[3] < d[4] < d[0], d
    elif name == "snow":  # severity 3 has fewer but larger flakes than 2: about the same change
        assert d[0] < d[1] and d[2] < d[3] < d[4] and abs(d[2] / d[1] - 1) < 0.03, d
    else:
        assert all(a < b for a, b in zip(d, d[1:])), d


def test_corrupt_rejects_bad_arguments(photos):
    with pytest.raises(ValueError, match="unknown corruption 'rain'.*gaussian_noise"):
        C.corrupt(photos, "rain", 1, [0] * 4)
    with pytest.raises(ValueError, match="severity must be one of"):
        C.corrupt(photos, "contrast", 6, [0] * 4)
    with pytest.raises(ValueError, match=r"RGB images \[B, 3, H, W\]"):
        C.corrupt(photos[0], "contrast", 1, [0])
    with pytest.raises(ValueError, match="4 images but 3 seeds"):
        C.corrupt(photos, "contrast", 1, [0] * 3)


# --------------------------------------------------------------------------- noise


def censored_std(c: float, bound: float) -> float:
    """Std of N(0, c) clipped to [-bound, bound]."""
    t = bound / c
    inside = c**2 * ((2 * stats.norm.cdf(t) - 1) - 2 * t * stats.norm.pdf(t))
    return float(np.sqrt(inside + 2 * bound**2 * stats.norm.sf(t)))


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_noise_has_the_severity_std(severity):
    """On mid-grey, out - in is N(0, c) clipped at +-0.5: its std is that of the censored normal."""
    c = C.GAUSSIAN_NOISE[severity - 1]
    noise = C.corrupt(flat(0.5, 256), "gaussian_noise", severity, [severity]) - 0.5
    assert float(noise.mean()) == pytest.approx(0, abs=0.003)
    assert float(noise.std()) == pytest.approx(censored_std(c, 0.5), rel=0.01)
    if severity == 1:  # 6 sigma from the bounds: nothing clipped, the std is c itself
        assert float(noise.std()) == pytest.approx(c, rel=0.01)


@pytest.mark.parametrize("severity", [1, 3, 5])
@pytest.mark.parametrize("level", [0.2, 0.7])
def test_shot_noise_is_poisson_at_the_severity_scale(severity, level):
    """Poisson(x c) / c clipped at 1: values on the 1/c grid, mean and variance of that law (mean x
    up to the clipping, variance x / c)."""
    c = C.SHOT_NOISE[severity - 1]
    out = C.corrupt(flat(level, 256), "shot_noise", severity, [7]).double()
    assert torch.allclose(
        out * c, (out * c).round(), atol=1e-4
    )  # counts / c (1 = c / c where clipped)
    k = np.arange(0, 400)
    values, pmf = np.minimum(k / c, 1.0), stats.poisson.pmf(k, level * c)
    mean, var = (values * pmf).sum(), ((values - (values * pmf).sum()) ** 2 * pmf).sum()
    assert float(out.mean()) == pytest.approx(mean, abs=4 * np.sqrt(var / out.numel()))
    assert float(out.var()) == pytest.approx(var, rel=0.03)
    if (
        level == 0.2 and severity == 1
    ):  # nothing reaches the clip: the mean is kept exactly in expectation
        assert mean == pytest.approx(level) and var == pytest.approx(level / c)


@pytest.mark.parametrize("severity", [1, 4, 5])
def test_impulse_noise_sets_a_fraction_c_to_salt_or_pepper(severity):
    c = C.IMPULSE_NOISE[severity - 1]
    out = C.corrupt(flat(0.5, 256), "impulse_noise", severity, [3])
    salt, pepper = float((out == 1).float().mean()), float((out == 0).float().mean())
    assert salt + pepper == pytest.approx(c, abs=0.005) and salt == pytest.approx(pepper, abs=0.005)
    assert bool(((out == 0) | (out == 1) | (out == 0.5)).all())
    assert not torch.equal(out[0, 0] == 1, out[0, 1] == 1)  # channels are hit independently


# --------------------------------------------------------------------------- blur


@pytest.mark.parametrize("name", BLURS)
def test_blurs_keep_flat_images_and_remove_more_detail_with_severity(name, photos):
    for severity in (1, 5):
        assert torch.allclose(
            C.corrupt(flat(0.37, 96), name, severity, [0]), flat(0.37, 96), atol=1e-5
        )
    energy = [high_frequency_energy(C.corrupt(photos, name, s, [0, 1, 2, 3])) for s in C.SEVERITIES]
    assert high_frequency_energy(photos) > 2 * energy[0]
    assert all(a > b for a, b in zip(energy, energy[1:])), energy


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_defocus_kernel_is_an_antialiased_disk(severity):
    radius, _ = C.DEFOCUS_BLUR[severity - 1]
    kernel = C._disk(*C.DEFOCUS_BLUR[severity - 1])
    half = kernel.shape[0] // 2
    assert kernel.shape[0] == 2 * max(radius, 8) + 1 and float(kernel.sum()) == pytest.approx(
        1, abs=1e-6
    )
    assert torch.allclose(kernel, kernel.flip(0)) and torch.allclose(kernel, kernel.T)
    yy, xx = torch.meshgrid(
        torch.arange(-half, half + 1), torch.arange(-half, half + 1), indexing="ij"
    )
    distance = (yy**2 + xx**2).float().sqrt()
    assert float(kernel[distance > radius + 1.5].sum()) < 1e-4  # nothing past the rim and its blur
    assert float(kernel[distance <= radius - 1].std()) < 1e-3  # flat inside


@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_smears_a_dot_along_a_line_with_half_gaussian_weights(severity):
    """ImageMagick's kernel: taps i = 0 .. 2 r at i pixels along an angle within +-45 degrees
    (rounded to whole pixels, so neighbouring taps may share one), weights exp(-i^2 / 2 sigma^2)."""
    radius, sigma = C.MOTION_BLUR[severity - 1]
    dot = torch.zeros(1, 3, 101, 101)
    dot[..., 50, 50] = 1
    out = C.corrupt(dot, "motion_blur", severity, [5])[0, 0]
    taps = np.exp(-(np.arange(2 * radius + 1) ** 2) / (2 * sigma**2))
    assert float(out.sum()) == pytest.approx(1, abs=1e-5)
    assert float(out[50, 50]) == pytest.approx(
        taps[0] / taps.sum(), abs=1e-6
    )  # tap 0: the dot itself
    lit = (out.nonzero() - 50).float()
    assert 1.4 * radius <= len(lit) <= 2 * radius + 1
    assert bool((lit[:, 0].abs() <= lit[:, 1].abs()).all())  # within 45 degrees of horizontal
    assert float(lit.norm(dim=1).max()) == pytest.approx(2 * radius, abs=0.75)
    direction = lit[lit.norm(dim=1).argmax()] / lit.norm(dim=1).max()
    off_line = lit - (lit @ direction)[:, None] * direction
    assert float(off_line.norm(dim=1).max()) <= 0.75  # on one line


def reference_clipped_zoom(image: np.ndarray, zoom: float) -> np.ndarray:
    """The definition: crop the central ceil(h / zoom) square, scipy-zoom it (order 1), trim to h."""
    h = image.shape[0]
    crop = int(np.ceil(h / zoom))
    top = (h - crop) // 2
    zoomed = ndimage.zoom(image[top : top + crop, top : top + crop], (zoom, zoom, 1), order=1)
    trim = (zoomed.shape[0] - h) // 2
    return zoomed[trim : trim + h, trim : trim + h]


@pytest.mark.parametrize("severity", [1, 5])
def test_zoom_blur_averages_the_image_and_its_central_zooms(severity):
    x = tensor(photo("coffee.png", (64, 64)))
    image = x.permute(1, 2, 0).double().numpy()
    zooms = np.arange(1, *C.ZOOM_BLUR[severity - 1])
    expected = (image + sum(reference_clipped_zoom(image, z) for z in zooms)) / (len(zooms) + 1)
    out = C.corrupt(x[None], "zoom_blur", severity, [0])[0].permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() < 1e-4


def test_glass_blur_only_moves_values_locally():
    """Blurred stripes stay stripes: a vertical edge moves by at most the blur plus max_delta."""
    x = flat(0.0, 64)
    x[..., 32:] = 1
    out = C.corrupt(x, "glass_blur", 5, [1])
    sigma, delta, iterations = C.GLASS_BLUR[4]
    reach = iterations * delta + 2 * int(4 * sigma + 0.5)
    assert bool((out[..., : 32 - reach] < 1e-6).all()) and bool(
        (out[..., 32 + reach :] > 1 - 1e-6).all()
    )


# --------------------------------------------------------------------------- weather


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_snow_on_black_is_grey_plus_streaks_and_their_180_degree_turn(severity):
    weight = C.SNOW[severity - 1][-1]
    out = C.corrupt(flat(0.0, 128), "snow", severity, [2])
    base = (1 - weight) * 0.5  # max(x, 1.5 grey + 0.5) is 0.5 on black
    assert bool((out >= base - 1e-6).all())
    assert torch.allclose(out, out.flip(-2, -1), atol=1e-5)
    assert float(out.max()) > base + 0.2  # flakes are there


def test_frost_blends_the_image_with_one_ice_layer_at_the_reference_weights():
    x = C.corrupt(flat(0.1, 128), "contrast", 1, [0])  # dim enough that nothing clips
    layers = []
    for severity in C.SEVERITIES:
        weight, ice = C.FROST[severity - 1]
        layers.append((C.corrupt(x, "frost", severity, [9]) - weight * x) / ice)
    for layer in layers[1:]:
        assert torch.allclose(layer, layers[0], atol=1e-5)
    ice = layers[0]
    assert float(ice.min()) >= -1e-6 and float(ice.max()) <= 1 + 1e-6
    assert 0.3 < float(ice.mean()) < 0.7 and float(ice.std()) > 0.05  # bright, textured
    assert float(ice[:, 2].mean()) > float(ice[:, 0].mean())  # blue-white


@pytest.mark.parametrize("severity", [1, 5])
def test_fog_adds_the_same_fractal_to_any_image_scaled_to_keep_the_peak(severity):
    strength, _ = C.FOG[severity - 1]
    a, b = tensor(photo("chelsea.png", (96, 96)))[None], tensor(photo("rocket.jpg", (96, 96)))[None]
    peak = 0.9
    a, b = a / a.max() * peak, b / b.max() * peak
    scale = peak / (peak + strength)
    fog_a = C.corrupt(a, "fog", severity, [4]) - a * scale
    fog_b = C.corrupt(b, "fog", severity, [4]) - b * scale
    assert torch.allclose(fog_a, fog_b, atol=1e-5)
    assert float(fog_a.min()) >= -1e-6 and float(fog_a.max()) <= strength * scale + 1e-5
    assert (
        float(fog_a.max() - fog_a.min()) > 0.3 * strength * scale
    )  # a crop of a full-range fractal
    assert torch.allclose(fog_a[:, 0], fog_a[:, 1], atol=1e-6)  # grey fog


def test_plasma_fractal_is_a_seeded_full_range_heightmap():
    rngs = lambda seed: [np.random.default_rng(seed)]  # noqa: E731
    field = image_ops.plasma(rngs(0), 64, decay=2.0)
    assert field.shape == (1, 64, 64) and field.min() == 0 and field.max() == 1
    assert np.array_equal(field, image_ops.plasma(rngs(0), 64, decay=2.0))
    assert not np.array_equal(field, image_ops.plasma(rngs(1), 64, decay=2.0))
    smooth, rough = (
        image_ops.plasma(rngs(0), 64, decay=3.0),
        image_ops.plasma(rngs(0), 64, decay=1.2),
    )
    assert np.abs(np.diff(smooth, axis=2)).mean() < np.abs(np.diff(rough, axis=2)).mean()


# --------------------------------------------------------------------------- digital


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_brightness_adds_c_to_hsv_value(severity, photos):
    x = photos[:2].clone()
    x[..., :4, :4] = 0  # black pixels turn grey
    c = C.BRIGHTNESS[severity - 1]
    hsv = rgb2hsv(x.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    expected = torch.from_numpy(hsv2rgb(hsv)).permute(0, 3, 1, 2).float()
    assert torch.allclose(C.corrupt(x, "brightness", severity, [0, 0]), expected, atol=1e-5)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_contrast_shrinks_towards_the_channel_mean(severity, photos):
    mean = photos.mean(dim=(2, 3), keepdim=True)
    expected = (photos - mean) * C.CONTRAST[severity - 1] + mean
    assert torch.allclose(C.corrupt(photos, "contrast", severity, [0] * 4), expected, atol=1e-6)


def test_elastic_transform_resamples_flat_and_real_images():
    assert torch.allclose(
        C.corrupt(flat(0.6, 96), "elastic_transform", 2, [0]), flat(0.6, 96), atol=1e-5
    )
    x = tensor(photo("astronaut.png", (96, 96)))[None]
    out = C.corrupt(x, "elastic_transform", 4, [0])
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    assert bool((out >= low - 1e-5).all() and (out <= high + 1e-5).all())  # interpolation only


@pytest.mark.parametrize("severity", [2, 5])
def test_pixelate_is_block_means_shown_nearest(severity, photos):
    """At 224 px, severity 2 (x0.5) and 5 (x0.25) divide evenly: 2x2 and 4x4 block means."""
    block = round(1 / C.PIXELATE[severity - 1])
    means = torch.nn.functional.avg_pool2d(photos, block)
    expected = means.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    assert torch.allclose(C.corrupt(photos, "pixelate", severity, [0] * 4), expected, atol=1e-5)


@pytest.mark.parametrize("severity", C.SEVERITIES)
@pytest.mark.parametrize("size", [224, 75])
def test_pixelate_matches_pil_box_resampling(severity, size):
    img = photo("chelsea.png", (size, size))
    small = int(size * C.PIXELATE[severity - 1])
    expected = tensor(img.resize((small, small), Image.BOX).resize((size, size), Image.BOX))
    out = C.corrupt(tensor(img)[None], "pixelate", severity, [0])[0]
    assert float((out - expected).abs().max()) <= 2.5 / 255  # PIL rounds to uint8 after each pass


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_jpeg_compression_is_pil_encode_decode_at_the_quality(severity):
    img = photo("astronaut.png", (96, 80))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=C.JPEG_QUALITY[severity - 1])
    expected = tensor(Image.open(buffer).convert("RGB"))
    assert torch.equal(C.corrupt(tensor(img)[None], "jpeg_compression", severity, [0])[0], expected)
