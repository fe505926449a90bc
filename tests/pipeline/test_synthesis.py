from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nsneg.pipeline import quality
from nsneg.pipeline.encoders import (
    VGG19Encoder,
    WeightsNotFound,
    build_encoder,
    load_vgg19_state_dict,
)
from nsneg.pipeline.images import RESIZE_SHORT, decode_rgb, make_crops, resize_short
from nsneg.pipeline.sources import embedded_listing
from nsneg.pipeline.synthesis import (
    CPU_BATCH_SIZE,
    SynthesisConfig,
    TextureSynthesizer,
    auto_batch_size,
    batch_size_for_memory,
    gram,
)
from nsneg_testing import encode

FAST = SynthesisConfig(steps=(20, 5, 2))


def embedded_crops(seed_offset: int = 0) -> np.ndarray:
    listing = embedded_listing()
    return np.stack(
        [
            make_crops(open(im.path, "rb").read(), np.random.default_rng(i + seed_offset)).pixels
            for i, im in enumerate(listing.images)
        ]
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


@contextmanager
def one_thread():
    """One intra-op thread: every kernel then sums in one fixed order for a given shape, so two
    runs on tensors of the same shapes give the same bytes on any CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: Two syntheses whose float sums are ordered differently (another batch size, another kernel,
#: compiled code) agree on each image's loss to this relative tolerance. Their pixels need not
#: agree: where a pixel's gradient is ~0 its sign is rounding noise, and Adam's first steps,
#: sign-like (a move of about lr whatever the gradient's size), turn that noise into a move of
#: several grey levels; how many pixels that hits depends on the processor's kernels. Those
#: pixels are the ones the loss does not depend on to first order, so the loss still agrees
#: (measured on an AVX-512 Xeon with the AVX-512, AVX2 and SSE4 kernels: 2e-7). A batch mate
#: leaking into an image is tested bit for bit instead, on one thread with equal shapes.
LOSS_RTOL = 2e-2


@pytest.mark.slow  # five syntheses
def test_batch_independence(crops):
    """An image's texture must not depend on its batch mates (no shared line search, no mean loss):
    with the same shapes on one thread it is the same bytes whoever its mates are, and alone or
    in a larger batch (another summation order) it reaches the same loss."""
    synth = TextureSynthesizer(FAST)
    with one_thread():
        a = synth(crops[[0, 3, 8]], [99, 11, 42])
        b = synth(crops[[5, 3, 2]], [3, 11, 7])
    np.testing.assert_array_equal(a.textures[1], b.textures[1])
    assert a.losses[1] == b.losses[1]
    alone = synth(crops[3:4], [11]).losses[0]
    other_mates = synth(crops[[3, 5]], [11, 3]).losses[0]
    for loss in (a.losses[1], other_mates):
        assert loss == pytest.approx(alone, rel=LOSS_RTOL)


@pytest.mark.slow  # 105 steps
def test_loss_decreases_with_more_steps(crops):
    short = TextureSynthesizer(SynthesisConfig(steps=(5, 1, 1)))(crops[:3], [0, 1, 2]).losses
    long = TextureSynthesizer(SynthesisConfig(steps=(80, 20, 5)))(crops[:3], [0, 1, 2]).losses
    assert np.all(long < short)


@pytest.fixture(scope="module")
def default_textures(crops):
    """The default configuration on the embedded photographs: what the quality thresholds are about."""
    return TextureSynthesizer(SynthesisConfig())(crops, list(range(len(crops)))).textures


@pytest.mark.slow  # torch.compile or the default synthesis schedule
def test_quality_thresholds_on_embedded_photos(crops, default_textures):
    other_crops = embedded_crops(seed_offset=100)[:, 1]
    n = len(crops)
    measured = [
        quality.measure(
            default_textures[i], crops[i], other_crops[i], default_textures[(i + 1) % n]
        )
        for i in range(n)
    ]
    ratios = [q.noise_ratio for q in measured]
    assert np.mean(ratios) <= quality.MAX_MEAN_NOISE_RATIO, ratios
    for q, repeats in zip(measured, self_layouts()):
        assert q.swd < q.other  # closer to its own crops than another image's texture is
        # no crop survives as a copy: the layout stays nearer what the photo repeats by itself
        # (a brick wall: much) than a copy's
        assert q.layout <= quality.max_layout_ncc(repeats), (q.layout, repeats)


def self_layouts() -> list[float]:
    """Each embedded photo's self_layout_ncc for the crops of ``embedded_crops()``."""
    out = []
    for i, im in enumerate(embedded_listing().images):
        data = open(im.path, "rb").read()
        cut = make_crops(data, np.random.default_rng(i))
        photo = np.asarray(resize_short(decode_rgb(data)[0], RESIZE_SHORT))
        out.append(quality.self_layout_ncc(photo, cut.pixels, cut.boxes))
    return out


def test_self_layout_reads_a_repeating_photo_high_and_a_copy_stays_above_the_bound():
    """Stripes repeat a crop's layout a period away; noise does not; a copy of a crop inside a
    texture is above the bound whatever the photo."""
    rng = np.random.default_rng(0)
    x = np.arange(256)
    stripes = np.broadcast_to(((x % 16) < 3)[None, :, None] * 200 + 30, (256, 256, 3))
    stripes = np.clip(stripes + rng.normal(0, 10, (256, 256, 3)), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    boxes = [(80, 80, 176, 176), (10, 150, 106, 246)]
    for photo, low, high in ((stripes, 0.8, 1.0), (noise, 0.0, 0.1)):
        crops = np.stack([photo[t:b, left:r] for left, t, r, b in boxes])
        assert low <= quality.self_layout_ncc(photo, crops, boxes) <= high
    crops = np.stack([stripes[t:b, left:r] for left, t, r, b in boxes])
    copy = quality.noise_like(crops, rng)
    copy[64:160, 40:136] = crops[0]
    repeats = quality.self_layout_ncc(stripes, crops, boxes)
    assert quality.layout_ncc(copy, crops) > quality.max_layout_ncc(repeats)
    assert quality.max_layout_ncc(0.0) == quality.MAX_LAYOUT_NCC


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


@pytest.mark.slow  # torch.compile or the default synthesis schedule
def test_shape_does_not_survive_while_a_copy_is_detected():
    crops = make_crops(star_image(), np.random.default_rng(0)).pixels
    texture = TextureSynthesizer(SynthesisConfig())(crops[None], [0]).textures[0]
    assert quality.layout_ncc(texture, crops) <= quality.MAX_LAYOUT_NCC
    copy = quality.noise_like(crops, np.random.default_rng(0))
    copy[64:160, 40:136] = crops[0]
    assert quality.layout_ncc(copy, crops) >= quality.MIN_COPY_NCC


def test_patch_swd_orders_floor_below_noise():
    crops = embedded_crops()[1]  # brick: stationary, so another crop is a true floor
    other = make_crops(
        open(embedded_listing().images[1].path, "rb").read(), np.random.default_rng(5)
    ).pixels[1]
    noise = quality.noise_like(crops, np.random.default_rng(0))
    floor = quality.patch_swd(other, crops)
    assert floor < 0.5 * quality.patch_swd(noise, crops)
    assert (
        quality.patch_swd(crops, crops) < 0.3 * floor
    )  # only patch subsampling separates a set from itself


def test_random_encoder_is_deterministic_from_seed():
    x = torch.rand(1, 3, 64, 64)
    a, b, c = (build_encoder("random", seed=s)(x) for s in (0, 0, 1))
    assert len(a) == 4 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """A torchvision VGG19 state_dict with random values: the code path, not the quality."""
    from torchvision.models import vgg19

    path = tmp_path_factory.mktemp("weights") / "vgg19.pth"
    torch.save(vgg19(weights=None).state_dict(), path)
    return path


@pytest.mark.slow  # VGG19 at 224 px on a CPU
def test_vgg19_loads_a_weights_file_and_synthesises(vgg19_file):
    path = vgg19_file
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


@pytest.mark.slow  # builds a VGG19 on a CPU
def test_vgg19_rejects_a_foreign_state_dict():
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        VGG19Encoder({"features.0.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "encoder,matmul_input_grad",
    [
        ("random", True),
        ("random", False),
        pytest.param("vgg19", False, marks=pytest.mark.slow),  # VGG19 at 224 px on a CPU
    ],
)
def test_accelerated_path_runs_on_cpu_for_both_encoders(crops, encoder, matmul_input_grad, request):
    """channels_last + bf16 autocast, the path CUDA takes by default, forced on the CPU: a
    regression there (like a rank-5 buffer refusing channels_last) turns this red. The random
    encoder runs both with the CPU's matmul input gradient and, as on CUDA, the library's."""
    weights = str(request.getfixturevalue("vgg19_file")) if encoder == "vgg19" else None
    config = SynthesisConfig(encoder=encoder, weights=weights, steps=(2, 1, 1), accelerated=True)
    synth = TextureSynthesizer(config)
    if encoder == "random":
        assert synth.encoder.matmul_input_grad  # the CPU's choice
        synth.encoder.matmul_input_grad = matmul_input_grad
    assert (
        synth.accelerated and not TextureSynthesizer(replace(config, accelerated=None)).accelerated
    )  # auto: CUDA only
    assert all(
        b.is_contiguous(memory_format=torch.channels_last)
        for b in synth.encoder.state_dict().values()
        if b.dim() == 4
    )
    features = synth.features(torch.rand(2, 3, 56, 56))
    assert all(f.dtype == torch.bfloat16 for f in features)
    result = synth(crops[:2], [0, 1])
    assert result.textures.shape == (2, 224, 224, 3) and result.textures.dtype == np.uint8
    assert np.all(np.isfinite(result.losses)) and result.textures.std() > 0


@pytest.mark.slow  # two syntheses of 43 steps, one in emulated bf16
def test_accelerated_bf16_quality_matches_fp32(crops):
    """bf16 features and Gram products cost no texture quality (noise ratio) and no Gram loss."""
    images, seeds = crops[:4], [0, 1, 2, 3]
    config = SynthesisConfig(steps=(30, 10, 3))
    fp32 = TextureSynthesizer(config)(images, seeds)
    bf16 = TextureSynthesizer(replace(config, accelerated=True))(images, seeds)
    others = embedded_crops(seed_offset=100)[:4, 1]

    def mean_ratio(textures):
        return np.mean(
            [
                quality.measure(
                    textures[i], images[i], others[i], textures[(i + 1) % 4]
                ).noise_ratio
                for i in range(4)
            ]
        )

    assert abs(mean_ratio(bf16.textures) - mean_ratio(fp32.textures)) < 0.05
    assert np.all(np.abs(bf16.losses - fp32.losses) <= 0.25 * fp32.losses + 1e-3)


@pytest.mark.parametrize("wrap", [False, True])
def test_random_encoder_matches_the_rank5_formulation(wrap):
    """The flat [levels * C, 3, k, k] weights give what a per-level rank-5 buffer gives, over a
    binomial (anti-aliased) pyramid, padded circularly for a canvas and by reflection for crops."""
    from nsneg.pipeline.encoders import blur_downsample

    encoder = build_encoder("random", seed=3)
    weight = encoder.weight.view(encoder.levels, -1, 3, encoder.kernel, encoder.kernel)
    bias = encoder.bias.view(encoder.levels, -1)
    x = torch.rand(2, 3, 56, 56)
    mode = "circular" if wrap else "reflect"
    expected, y = [], x - 0.5
    for level in range(encoder.levels):
        if level:
            y = blur_downsample(y, mode)
        expected.append(F.relu(F.conv2d(F.pad(y, (2,) * 4, mode=mode), weight[level], bias[level])))
    got = encoder(x, wrap=wrap)
    assert [g.shape for g in got] == [e.shape for e in expected]
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected))


def test_matmul_input_grad_conv_passes_gradcheck():
    from nsneg.pipeline.encoders import _MatmulInputGradConv

    x = torch.rand(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: _MatmulInputGradConv.apply(x, w, b), (x,))


@pytest.mark.parametrize("accelerated", [False, True])
def test_random_encoder_matmul_input_grad_matches_the_library_convolution(accelerated):
    """Same features and pixel gradients with and without ``matmul_input_grad``, in float32 and
    in the accelerated path's bf16 autocast with channels_last (the CPU tests run both)."""
    plain = build_encoder("random", seed=1)
    matmul = build_encoder("random", seed=1, matmul_input_grad=True)
    target = torch.rand(3, 3, 40, 40)
    grads, features = [], []
    for encoder in (plain, matmul):
        x = target.clone()
        if accelerated:
            encoder = encoder.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=accelerated):
            out = encoder(x)
            sum(gram(f).sum() for f in out).backward()
        features.append(out)
        grads.append(x.grad)
    tol = 3e-2 if accelerated else 1e-5
    for a, b in zip(*features):
        assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), atol=tol)
    scale = grads[0].abs().max().item()
    assert grads[1].dtype == torch.float32
    assert torch.allclose(grads[0], grads[1], rtol=tol, atol=tol * scale)
    assert TextureSynthesizer(FAST).encoder.matmul_input_grad  # a CPU synthesiser uses it
    # filters that need a gradient (not this project's) take the library's path, which gives one
    matmul.weight.requires_grad_(True)
    sum(f.sum() for f in matmul(torch.rand(1, 3, 20, 20, requires_grad=True))).backward()
    assert matmul.weight.grad is not None and matmul.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_and_its_symmetric_backward_match_autograd(dtype):
    f = torch.randn(3, 8, 5, 7, dtype=torch.float64).to(dtype).requires_grad_(True)
    f_ref = f.detach().double().requires_grad_(True)
    weights = torch.randn(3, 8, 8, dtype=torch.float64)
    g = gram(f)
    assert g.dtype == torch.float32
    (g.double() * weights).sum().backward()
    flat = f_ref.reshape(3, 8, 35)
    ((flat @ flat.transpose(1, 2) / 35) * weights).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(
        g.double(), (flat @ flat.transpose(1, 2) / 35).detach(), rtol=tol, atol=tol
    )
    assert torch.allclose(
        f.grad.double(), f_ref.grad, rtol=tol, atol=tol * f_ref.grad.abs().max().item()
    )


def test_batch_size_is_chosen_for_the_device():
    assert auto_batch_size("random", "cpu") == auto_batch_size("vgg19", "cpu") == CPU_BATCH_SIZE
    assert TextureSynthesizer(SynthesisConfig(batch_size=5)).batch_size == 5
    assert batch_size_for_memory("vgg19", 80 * 2**30) == 128  # H100 80 GB
    assert batch_size_for_memory("random", 80 * 2**30) == 256  # the ceiling
    assert batch_size_for_memory("vgg19", 16 * 2**30) == 32
    assert batch_size_for_memory("vgg19", 2**20) == 1  # never zero
    with pytest.raises(ValueError, match="batch_size"):
        SynthesisConfig(batch_size=0)


@pytest.mark.slow  # six syntheses
def test_a_batch_that_does_not_fit_is_split_and_the_batch_size_lowered(crops):
    class SmallDevice(TextureSynthesizer):
        def _synthesize(self, crops_t, seeds):
            if len(seeds) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super()._synthesize(crops_t, seeds)

    synth = SmallDevice(replace(FAST, batch_size=5))
    with one_thread():
        result = synth(crops[:5], [0, 1, 2, 3, 4])
        # 5 -> [0, 1, 2] (still too big: [0, 1] and [2]) and [3, 4]: the same shapes, the same bytes
        pair = TextureSynthesizer(FAST)(crops[3:5], [3, 4])
    assert (
        synth.batch_size == 2
        and result.textures.shape == (5, 224, 224, 3)
        and result.losses.shape == (5,)
    )
    np.testing.assert_array_equal(result.textures[3:], pair.textures)
    SmallDevice._synthesize = lambda self, crops_t, seeds: (_ for _ in ()).throw(
        torch.OutOfMemoryError("full")
    )  # nothing fits
    with pytest.raises(torch.OutOfMemoryError, match="full"):
        synth(crops[:3], [0, 1, 2])


def assert_same_step(compiled, eager, crops, seeds) -> None:
    """One step at the same pixels, at every stage's size: the same loss and pixel gradient up to
    float32 summation order. A reordered float32 sum of n terms moves by about sqrt(n) ulps of its
    largest terms (n up to ~5e4 pixels here: ~1e-5; measured on an AVX-512 Xeon: 0 for the loss,
    1e-7 of the largest gradient), so 1e-4 holds on any CPU while a missing or wrong term fails.
    The pixels start as noise, far from the targets: no cancellation in the loss amplifies it."""
    crops_t = torch.as_tensor(crops).permute(0, 1, 4, 2, 3).float() / 255.0
    for size in compiled.config.sizes:
        x0 = F.interpolate(compiled._init(crops_t, seeds), size=(size, size), mode="bicubic")
        targets = compiled.targets(crops_t, size)
        losses, grads = [], []
        for synth in (compiled, eager):
            x = x0.clamp(0, 1).requires_grad_(True)
            loss = synth.step_loss(x, targets)  # [B]
            loss.sum().backward()
            losses.append(loss.detach())
            grads.append(x.grad)
        assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=0), (size, losses)
        assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[1].abs().max(), size


@pytest.mark.slow  # torch.compile or the default synthesis schedule
def test_compiled_step_matches_eager_and_keeps_images_independent(crops):
    """``SynthesisConfig.compile``: the per-step loss (features + Gram + loss, forward and backward)
    through TorchDynamo and AOTAutograd, the path inductor and CUDA graphs take on a GPU. The suite
    uses the ``aot_eager`` backend (no code generation: inductor takes minutes on 2 cores)."""
    from torch._dynamo.utils import counters

    from nsneg.pipeline.synthesis import compile_mode

    assert compile_mode("inductor") == "reduce-overhead" and compile_mode("aot_eager") is None
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    config = SynthesisConfig(steps=(3, 2, 1), compile=True, compile_backend="aot_eager")
    compiled = TextureSynthesizer(config)
    got = compiled(crops[[0, 3]], [99, 11])
    assert counters["stats"]["unique_graphs"] - before >= 3  # one graph per stage size
    eager = TextureSynthesizer(replace(config, compile=False))
    eager.encoder.matmul_input_grad = False  # compiled code takes the library's convolution
    assert_same_step(compiled, eager, crops[[0, 3]], [99, 11])
    # The whole synthesis: Adam amplifies those ulps at pixels of ~0 gradient; the loss agrees.
    want = eager(crops[[0, 3]], [99, 11])
    np.testing.assert_allclose(got.losses, want.losses, rtol=LOSS_RTOL)
    # Batch mates do not leak: the same shapes on one thread (no recompilation), the same bytes.
    with one_thread():
        a = compiled(crops[[0, 3]], [99, 11])
        b = compiled(crops[[5, 3]], [3, 11])
    np.testing.assert_array_equal(a.textures[1], b.textures[1])
    graphs = counters["stats"]["unique_graphs"]
    alone = compiled(crops[3:4], [11])  # another batch size: compiled again
    assert counters["stats"]["unique_graphs"] > graphs
    assert alone.losses[0] == pytest.approx(got.losses[1], rel=LOSS_RTOL)


@pytest.mark.slow  # torch.compile or the default synthesis schedule
def test_compiled_step_runs_through_inductor_on_cpu(crops):
    """The default backend, inductor in mode "reduce-overhead" (CUDA graphs on CUDA), compiles and
    runs on the CPU: a lowering that breaks (as replication_pad2d's backward did) turns this red.
    One image, one step per stage: ~40 s of code generation on 2 busy cores. Inductor reorders
    float sums, so the step is compared at the same pixels and the synthesis by its loss."""
    config = SynthesisConfig(steps=(1, 1, 1), compile=True)
    compiled = TextureSynthesizer(config)
    got = compiled(crops[:1], [0])
    eager = TextureSynthesizer(replace(config, compile=False))
    eager.encoder.matmul_input_grad = False  # compiled code takes the library's convolution
    assert_same_step(compiled, eager, crops[:1], [0])  # the shapes compiled above: no new code
    want = eager(crops[:1], [0])
    np.testing.assert_allclose(got.losses, want.losses, rtol=LOSS_RTOL)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "circular"])
def test_index_pad_matches_f_pad_values_and_gradients(mode):
    """The compiled encoder's padding (index_select) is F.pad's, gradients included."""
    from nsneg.pipeline.encoders import index_pad

    x = torch.rand(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    w = torch.randn(2, 3, 10, 13, dtype=torch.float64)
    a, b = index_pad(x, (2, 2, 1, 2), mode), F.pad(y, (2, 2, 1, 2), mode=mode)
    assert torch.equal(a, b)
    (a * w).sum().backward()
    (b * w).sum().backward()
    assert torch.allclose(x.grad, y.grad)


def test_reflect_padding_wider_than_the_image_folds_again():
    """The coarsest level of a small crop: F.pad refuses a reflection as wide as the image, the
    encoder's pad reflects again (period 2 (n - 1)), as numpy's "reflect" does."""
    from nsneg.pipeline.encoders import pad

    x = torch.arange(6.0).view(1, 1, 2, 3)
    got = pad(x, (4, 5, 3, 2), "reflect")
    want = np.pad(x[0, 0].numpy(), ((3, 2), (4, 5)), mode="reflect")
    assert torch.equal(got[0, 0], torch.from_numpy(want))
    assert torch.equal(pad(torch.ones(1, 1, 1, 1), (2, 2, 2, 2), "reflect"), torch.ones(1, 1, 5, 5))
