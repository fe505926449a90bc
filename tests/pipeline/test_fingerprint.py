"""The spatial fingerprint: the measures read a grid and a frame, photos carry neither, and
neither do the textures the synthesis makes of photos and of procedural images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.datasets_manifest.format.constants import CROP_SIZE, TEXTURE_SIZE
from nsneg.pipeline import fingerprint
from nsneg.pipeline.images import decode_rgb, make_crops
from nsneg.pipeline.sources import embedded_listing
from nsneg.pipeline.synthesis import (
    SynthesisConfig,
    TextureSynthesizer,
    roll_each,
    stage_offsets,
    upsample_periodic,
)

#: A texture's 4-px spike may be this many times the real crops' median (which is ~2).
SPIKE_FACTOR = 3.0


@pytest.fixture(scope="module")
def photos():
    return [
        np.asarray(decode_rgb(open(im.path, "rb").read())[0]) for im in embedded_listing().images
    ]


@pytest.fixture(scope="module")
def real_crops(photos):
    """uint8 [30, 224, 224, 3]: three random crops of each demo photo, resized to 224 px."""
    rng = np.random.default_rng(0)
    return np.concatenate([fingerprint.photo_crops(p, 3, rng) for p in photos])


def test_real_photo_crops_carry_no_fingerprint(real_crops):
    fp = fingerprint.fingerprint(real_crops)
    assert fp.textures == 30 and fp.within_thresholds(), fp
    assert fp.median_spike < 4  # a photo's edges spread over all directions


def test_a_4px_grid_is_read_as_a_spike_and_a_profile_share(real_crops):
    """Grain on every 4th row and column, as a stride-4 gradient imprints it."""
    rng = np.random.default_rng(2)
    lattice = np.zeros((224, 224))
    lattice[::4, :] = lattice[:, ::4] = 1
    grain = rng.normal(0, 8, real_crops.shape[:3] + (1,)) * lattice[None, :, :, None]
    grid = np.clip(real_crops + grain, 0, 255).astype(np.uint8)
    spikes = fingerprint.period_spike(fingerprint.gradient_maps(grid))
    fp = fingerprint.fingerprint(grid)
    assert np.median(spikes) > 3 * fingerprint.MAX_MEDIAN_SPIKE
    assert fp.profile_share > 0.015  # real crops: ~0.2 %; any stationary set: ~0.9 %
    assert fp.profile_spike > 50 and fp.profile_spike == pytest.approx(
        fingerprint.profile_period_spike(fingerprint.gradient_maps(grid).mean(axis=0))
    )
    assert not fp.within_thresholds()


def test_a_busier_border_band_is_read_as_a_frame(real_crops):
    rng = np.random.default_rng(1)
    framed = real_crops.astype(np.float64)
    band = np.ones((224, 224), bool)
    band[24:-24, 24:-24] = False
    framed[:, band] += rng.normal(0, 12, (len(framed), int(band.sum()), 1))
    fp = fingerprint.fingerprint(np.clip(framed, 0, 255).astype(np.uint8))
    assert fp.frame_ratio > 1.2
    assert fingerprint.fingerprint(real_crops).frame_ratio < 1.0  # photos: objects sit inside


def test_accumulator_streams_like_one_call_and_counts_other_sizes(real_crops):
    acc = fingerprint.FingerprintAccumulator()
    for image in real_crops:
        acc.add(image)
    acc.add(real_crops[0, :128, :128])
    streamed, whole = acc.result(), fingerprint.fingerprint(real_crops)
    assert acc.other_sizes == 1 and streamed.textures == 31
    assert streamed.frame_ratio == pytest.approx(whole.frame_ratio)
    assert streamed.profile_share == pytest.approx(whole.profile_share)
    assert fingerprint.FingerprintAccumulator().result() is None
    with pytest.raises(ValueError, match="H, W, 3"):
        fingerprint.gradient_maps(np.zeros((4, 224, 224)))


def test_roll_each_rolls_every_image_by_its_own_shift():
    x = torch.rand(3, 2, 8, 10)
    shifts = torch.tensor([[1, 2], [0, 0], [7, 13]])
    rolled = roll_each(x, shifts)
    for b in range(3):
        assert torch.equal(rolled[b], torch.roll(x[b], tuple(shifts[b].tolist()), (-2, -1)))


def test_upsampling_a_torus_commutes_with_rolling_it():
    x = torch.rand(2, 3, 8, 8)
    up = upsample_periodic(x, 16)
    assert torch.allclose(
        torch.roll(up, (2, 6), (-2, -1)),
        upsample_periodic(torch.roll(x, (1, 3), (-2, -1)), 16),
        atol=1e-5,  # float32 FFTs of [0, 1] values
    )
    # it interpolates the canvas less its Nyquist row and column (a grating locked to the lattice)
    spectrum = torch.fft.fft2(x)
    spectrum[..., 4, :] = 0
    spectrum[..., :, 4] = 0
    assert torch.allclose(up[..., ::2, ::2], torch.fft.ifft2(spectrum).real, atol=1e-5)


def test_upsampling_drops_an_even_canvas_nyquist_and_keeps_all_of_an_odd_one():
    n = 8
    nyquist = torch.tensor([(-1.0) ** i for i in range(n)]).view(1, 1, 1, n).expand(1, 1, n, n)
    assert torch.allclose(upsample_periodic(nyquist, 32), torch.zeros(1, 1, 32, 32), atol=1e-5)
    odd = torch.rand(2, 3, 7, 7)  # no Nyquist: every frequency kept, a real result interpolated
    up = upsample_periodic(odd, 21)
    assert torch.allclose(up[..., ::3, ::3], odd, atol=1e-5)


def test_each_upsampled_canvas_is_rolled_by_an_offset_of_its_own_image():
    """The coarse lattice's trace in an upsampled canvas gets each image's own phase: with no
    optimisation step, a texture is its start upsampled and rolled by ``stage_offsets``."""
    synth = TextureSynthesizer(SynthesisConfig(sizes=(56, 224), steps=(0, 0)))
    crops = np.random.default_rng(0).integers(0, 256, (3, 2, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    seeds = [5, 6, 7]
    got = synth(crops, seeds).textures
    start = synth._init(torch.as_tensor(crops).permute(0, 1, 4, 2, 3).float() / 255.0, seeds)
    up = roll_each(upsample_periodic(start, 224).clamp(0, 1), stage_offsets(seeds, 1, 224))
    want = (up * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, want)
    # seeded per image, uniform over the lattice's phases
    assert torch.equal(stage_offsets([6], 1, 224)[0], stage_offsets(seeds, 1, 224)[1])
    phases = stage_offsets(list(range(4000)), 1, 224) % 4  # [4000, 2]
    counts = np.bincount((phases[:, 0] * 4 + phases[:, 1]).numpy(), minlength=16)
    assert counts.min() > 180 and counts.max() < 320  # 250 each; ~4.5 sigma either side


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def made():
    """(crop pairs, textures) of 6 demo photos and of 8 procedural images (one per class of the
    miniature world), at a cheap schedule: cheap schedules made the strongest grid (a median
    spike of ~235 before the canvas was a rolled torus)."""
    from mini_repro import protocol
    from mini_repro import world as shapes

    listing = embedded_listing().images
    photo_pairs = [
        make_crops(open(im.path, "rb").read(), np.random.default_rng(i)).pixels
        for i, im in enumerate(listing[:6])
    ]
    world_pairs = []
    for cls in range(len(shapes.CLASSES)):
        rng = shapes.image_rng(0, "pretrain", cls, 0)
        img, _ = shapes.render(protocol.WORLD, "pretrain", cls, rng)
        world_pairs.append(make_crops(_png(img), np.random.default_rng(cls)).pixels)
    synth = TextureSynthesizer(SynthesisConfig(steps=(20, 5, 2), batch_size=16))
    pairs = np.stack(photo_pairs + world_pairs)
    return pairs, synth(pairs, list(range(len(pairs)))).textures


def own_spikes(pairs: np.ndarray) -> np.ndarray:
    """[N]: the larger 4-px spike of each image's two 96 px crops, scaled to a 224 px map (a
    periodic component's peak over the ring's median grows with the side: x 224 / 96)."""
    maps = fingerprint.gradient_maps(pairs.reshape(-1, *pairs.shape[2:]))
    spikes = fingerprint.period_spike(maps).reshape(len(pairs), 2).max(axis=1)
    return spikes * TEXTURE_SIZE / CROP_SIZE


def test_each_texture_spikes_no_more_than_real_crops_by_a_small_factor(made, real_crops):
    """A texture's spike is within SPIKE_FACTOR of real crops', or of its own crops' where the
    photo itself is periodic at 4 px (the demo's brick wall: ~14 at 96 px)."""
    pairs, textures = made
    reference = float(np.median(fingerprint.period_spike(fingerprint.gradient_maps(real_crops))))
    allowed = SPIKE_FACTOR * np.maximum(max(reference, 2.0), own_spikes(pairs))
    spikes = fingerprint.period_spike(fingerprint.gradient_maps(textures))
    assert np.all(spikes <= allowed), (spikes.round(1), allowed.round(1))
    assert np.median(spikes) <= fingerprint.MAX_MEDIAN_SPIKE


def test_the_textures_show_no_frame_and_no_grid_on_average(made):
    """Over the set, leaving out the images whose own crops are periodic at 4 px (their texture
    rightly is, at its own phase, and one such texture dominates the average of 14)."""
    pairs, textures = made
    plain = own_spikes(pairs) <= fingerprint.MAX_MEDIAN_SPIKE * TEXTURE_SIZE / CROP_SIZE
    assert plain.sum() >= 12
    fp = fingerprint.fingerprint(textures[plain])
    assert fp.frame_ratio <= fingerprint.MAX_FRAME_RATIO, fp
    # a flat profile spectrum holds ~1 / 112 of its power in any bin (profile_period_spike's
    # docstring): the 4-px bin may not stand out of the others (median ratio ~1.4 for noise)
    assert fp.profile_spike <= fingerprint.MAX_PROFILE_SPIKE, fp
    assert fp.within_thresholds(), fp
