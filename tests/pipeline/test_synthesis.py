import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pipeline import quality
from pipeline.encoders import VGG19Encoder, WeightsNotFound, build_encoder, load_vgg19_state_dict
from pipeline.images import make_crops
from pipeline.sources import embedded_listing
from pipeline.synthesis import SynthesisConfig, TextureSynthesizer
from tests.helpers import encode

FAST = SynthesisConfig(steps=(20, 5, 2))


def embedded_crops(seed_offset: int = 0) -> np.ndarray:
    listing = embedded_listing()
    return np.stack(
        [make_crops(open(im.path, "rb").read(), np.random.default_rng(i + seed_offset)).pixels for i, im in enumerate(listing.images)]
    )


@pytest.fixture(scope="module")
def crops():
    return embedded_crops()


def test_output_shape_dtype_and_loss(crops):
    result = TextureSynthesizer(FAST)(crops[:2], [1, 2])
    assert result.textures.shape == (2, 224, 224, 3) and result.textures.dtype == np.uint8
    assert result.losses.shape == (2,) and np.all(np.isfinite(result.losses))


def test_deterministic_given_seed(crops):
    synth = TextureSynthesizer(FAST)
    a, b = synth(crops[:2], [5, 6]), synth(crops[:2], [5, 6])
    assert np.array_equal(a.textures, b.textures)
    assert not np.array_equal(a.textures[0], synth(crops[:1], [7]).textures[0])


def test_batch_independence(crops):
    """An image's texture must not depend on its batch mates (no shared line search, no mean loss)."""
    synth = TextureSynthesizer(FAST)
    alone = synth(crops[3:4], [11]).textures[0]
    in_batch = synth(crops[[0, 3, 8]], [99, 11, 42]).textures[1]
    other_mates = synth(crops[[3, 5]], [11, 3]).textures[0]
    for t in (in_batch, other_mates):
        diff = np.abs(alone.astype(int) - t.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05  # float summation order only


def test_loss_decreases_with_more_steps(crops):
    short = TextureSynthesizer(SynthesisConfig(steps=(5, 1, 1)))(crops[:3], [0, 1, 2]).losses
    long = TextureSynthesizer(SynthesisConfig(steps=(80, 20, 5)))(crops[:3], [0, 1, 2]).losses
    assert np.all(long < short)


@pytest.fixture(scope="module")
def default_textures(crops):
    """The default configuration on the embedded photographs: what the quality thresholds are about."""
    return TextureSynthesizer(SynthesisConfig())(crops, list(range(len(crops)))).textures


def test_quality_thresholds_on_embedded_photos(crops, default_textures):
    other_crops = embedded_crops(seed_offset=100)[:, 1]
    n = len(crops)
    measured = [
        quality.measure(default_textures[i], crops[i], other_crops[i], default_textures[(i + 1) % n]) for i in range(n)
    ]
    ratios = [q.noise_ratio for q in measured]
    assert np.mean(ratios) <= quality.MAX_MEAN_NOISE_RATIO, ratios
    for q in measured:
        assert q.swd < q.other  # closer to its own crops than another image's texture is
        assert q.layout <= quality.MAX_LAYOUT_NCC  # no crop survives as a copy


def star_image(size: int = 256) -> bytes:
    img = Image.new("RGB", (size, size), (235, 235, 230))
    c, outer, inner = size / 2, 0.45 * size, 0.18 * size
    points = []
    for k in range(10):
        r = outer if k % 2 == 0 else inner
        a = np.pi / 2 + k * np.pi / 5
        points.append((c + r * np.cos(a), c - r * np.sin(a)))
    ImageDraw.Draw(img).polygon(points, fill=(20, 30, 140))
    return encode(img)


def test_shape_does_not_survive_while_a_copy_is_detected():
    crops = make_crops(star_image(), np.random.default_rng(0)).pixels
    texture = TextureSynthesizer(SynthesisConfig())(crops[None], [0]).textures[0]
    assert quality.layout_ncc(texture, crops) <= quality.MAX_LAYOUT_NCC
    copy = quality.noise_like(crops, np.random.default_rng(0))
    copy[64:160, 40:136] = crops[0]
    assert quality.layout_ncc(copy, crops) >= quality.MIN_COPY_NCC


def test_patch_swd_orders_floor_below_noise():
    crops = embedded_crops()[1]  # brick: stationary, so another crop is a true floor
    other = make_crops(open(embedded_listing().images[1].path, "rb").read(), np.random.default_rng(5)).pixels[1]
    noise = quality.noise_like(crops, np.random.default_rng(0))
    floor = quality.patch_swd(other, crops)
    assert floor < 0.5 * quality.patch_swd(noise, crops)
    assert quality.patch_swd(crops, crops) < 0.3 * floor  # only patch subsampling separates a set from itself


def test_random_encoder_is_deterministic_from_seed():
    x = torch.rand(1, 3, 64, 64)
    a, b, c = (build_encoder("random", seed=s)(x) for s in (0, 0, 1))
    assert len(a) == 4 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_vgg19_loads_a_weights_file_and_synthesises(tmp_path):
    from torchvision.models import vgg19

    path = tmp_path / "vgg19.pth"
    torch.save(vgg19(weights=None).state_dict(), path)
    encoder = build_encoder("vgg19", weights=path)
    features = encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 512]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in encoder.modules())
    config = SynthesisConfig(encoder="vgg19", weights=str(path), steps=(2, 1, 0))
    result = TextureSynthesizer(config)(embedded_crops()[:1], [0])
    assert result.textures.shape == (1, 224, 224, 3)


def test_vgg19_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFound, match="--weights FILE") as e:
        load_vgg19_state_dict(tmp_path / "absent.pth")
    assert "vgg19-dcbb9e9d.pth" in str(e.value) and "--encoder random" in str(e.value)


def test_vgg19_rejects_a_foreign_state_dict():
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        VGG19Encoder({"features.0.weight": torch.zeros(1)})
