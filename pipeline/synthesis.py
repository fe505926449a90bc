"""Batched neural texture synthesis: a batch of crop pairs in, a batch of 224 px textures out.

Gatys et al. (2015): optimise the pixels until the Gram matrices of encoder features
match those of the target. Here the target of each image is the pooled Gram matrices
of its two 96 px crops, and the batch is optimised together but independently:

* the loss is a *sum* of per-image losses and Adam keeps per-element state, so an
  image's texture does not depend on its batch mates (L-BFGS would couple them through
  one shared line search);
* coarse to fine (56 -> 112 -> 224 px by default), the crops scaled alike, so most
  steps run at 1/16 of the pixels;
* each stage (120 / 40 / 24 steps): Adam at lr 0.05, ramped up linearly over the first 30 % of
  its steps, then a cosine down to 0.1 x lr (Adam's first steps move every pixel by about lr
  whatever its gradient: without the ramp they leave colour grain in flat regions). The start
  is the crops' mean colour plus seeded noise of std 0.05;
* no spatial fingerprint: the canvas is a torus (the encoder pads it circularly, stages are
  upsampled across the wrap without the coarse Nyquist, then rolled by a per-image offset) and
  every step sees it rolled by a random per-image shift, so no pixel keeps one phase of the
  encoder's strides or of a coarse stage's lattice, and none is near a border; the crops (the
  targets) are padded by reflection. Without this every texture carried a 4 px grid and a
  frame (``nsneg.pipeline.fingerprint``);
* ``accelerated`` (default: on CUDA only): channels_last and bf16 autocast, the Gram
  matrices of bf16 features computed without an fp32 copy of the feature maps. The
  same path runs on any device when asked for (the CPU tests do); otherwise float32
  and deterministic;
* on a CPU the process keeps freed memory (``nsneg.pipeline.host_memory``) and the random
  encoder takes the pixels' gradient as a matmul plus shifted adds (``matmul_input_grad``);
* ``compile`` (opt-in, default off): the per-step loss (features + Gram + loss, forward and
  backward) through ``torch.compile`` with ``dynamic=False`` (one compilation per stage size
  and batch size), inductor in mode "reduce-overhead": CUDA graphs on CUDA, against the launch
  overhead of the small early stages. The CPU tests run the same call with the ``aot_eager``
  backend.

The measurements behind these choices: docs/pipeline.md and docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nsneg.datasets_manifest.format.constants import CROP_SIZE, TEXTURE_SIZE
from nsneg.pipeline.encoders import build_encoder
from nsneg.pipeline.host_memory import retain_freed_memory

GENERATOR_VERSION = "nsneg-gram-adam-5"

#: Images per batch on a CPU when the config does not say.
CPU_BATCH_SIZE = 16
#: GPU memory one image of a batch is budgeted at 224 px (bf16 features and saved activations,
#: fp32 pixels, gradients and Adam state, with headroom). Estimates: GPU runs revise them.
GPU_BYTES_PER_IMAGE = {"vgg19": 256 * 2**20, "random": 64 * 2**20}
#: Share of the card's memory the automatic batch size plans to use, and its ceiling.
GPU_MEMORY_SHARE = 0.6
MAX_AUTO_BATCH_SIZE = 256


@dataclass(frozen=True)
class SynthesisConfig:
    encoder: str = "random"
    weights: str | None = None
    encoder_seed: int = 0
    sizes: tuple[int, ...] = (56, 112, 224)
    steps: tuple[int, ...] = (120, 40, 24)
    lr: float | tuple[float, ...] = 0.05  # Adam's lr: one for all stages, or one per stage
    lr_floor: float = 0.1  # each stage's cosine decays its lr to lr_floor x lr
    init_noise: float = 0.05  # std of the seeded noise the first stage starts from
    #: Share of each stage's steps over which its lr ramps up linearly from 0 (then the cosine):
    #: Adam's first steps are sign-like, every pixel moved by lr whatever its gradient.
    warmup: float = 0.3
    batch_size: int | None = (
        None  # None: CPU_BATCH_SIZE on a CPU, chosen for the card's memory on a GPU
    )
    accelerated: bool | None = None  # channels_last + bf16 autocast; None: on CUDA only
    #: torch.compile the per-step loss (features + Gram + loss, forward and backward): opt-in,
    #: not yet measured on a GPU. Inductor runs in mode "reduce-overhead" (CUDA graphs on CUDA).
    compile: bool = False
    compile_backend: str = "inductor"  # "aot_eager": traced by Dynamo/AOTAutograd, no codegen

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.steps) or not self.sizes:
            raise ValueError(
                f"sizes {self.sizes} and steps {self.steps} must be non-empty and of equal length"
            )
        if self.sizes[-1] != TEXTURE_SIZE:
            raise ValueError(f"the last size must be {TEXTURE_SIZE}, got {self.sizes}")
        if not isinstance(self.lr, (int, float)) and len(self.lr) != len(self.sizes):
            raise ValueError(f"lr {self.lr} needs one value per stage {self.sizes}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def stage_lrs(self) -> tuple[float, ...]:
        if isinstance(self.lr, (int, float)):
            return (float(self.lr),) * len(self.sizes)
        return tuple(float(v) for v in self.lr)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sizes"], d["steps"] = list(self.sizes), list(self.steps)
        d["lr"] = self.lr if isinstance(self.lr, (int, float)) else list(self.lr)
        d["version"] = GENERATOR_VERSION
        return d


def stage_schedule(steps: int, warmup: float, floor: float):
    """Step t -> lr factor: a linear ramp over ``warmup`` x steps, then a cosine from 1 to floor."""
    ramp = warmup * steps

    def factor(t: int) -> float:
        cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / max(steps, 1)))
        return cosine * min(1.0, (t + 1) / ramp) if ramp > 0 else cosine

    return factor


def compile_mode(backend: str) -> str | None:
    """torch.compile's mode for ``backend``: "reduce-overhead" for inductor (CUDA graphs on CUDA,
    where a small-kernel step is launch-bound; on a CPU inductor's plain code), none for other
    backends (they take no mode). No device branch: the CPU tests run the same call."""
    return "reduce-overhead" if backend == "inductor" else None


def auto_batch_size(encoder: str, device: str | torch.device) -> int:
    """Images per batch for ``device``: CPU_BATCH_SIZE on a CPU; on a GPU the largest power of
    two whose budget (GPU_BYTES_PER_IMAGE) fits GPU_MEMORY_SHARE of the card, at most
    MAX_AUTO_BATCH_SIZE."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    total = torch.cuda.get_device_properties(device).total_memory
    return batch_size_for_memory(encoder, total)


def batch_size_for_memory(encoder: str, total_bytes: int) -> int:
    fits = int(GPU_MEMORY_SHARE * total_bytes // GPU_BYTES_PER_IMAGE[encoder])
    return max(1, min(MAX_AUTO_BATCH_SIZE, 2 ** int(math.log2(fits)) if fits >= 1 else 1))


@dataclass
class SynthesisResult:
    textures: np.ndarray  # uint8 [B, 224, 224, 3]
    losses: np.ndarray  # float [B], final per-image Gram loss


def canvas_shifts(seeds: list[int], stage: int, steps: int, size: int) -> torch.Tensor:
    """int64 [steps, B, 2]: each image's (dy, dx) roll of its ``size`` px canvas at each step of
    ``stage``, uniform over the torus and drawn from the image's own seed (not its batch's)."""
    per_image = [
        np.random.default_rng([seed, stage]).integers(0, size, (steps, 2)) for seed in seeds
    ]  # B x [steps, 2]
    return torch.from_numpy(np.stack(per_image, axis=1))


def stage_offsets(seeds: list[int], stage: int, size: int) -> torch.Tensor:
    """int64 [B, 2]: each image's (dy, dx) roll of its canvas when it is upsampled for ``stage``.
    The upsampled canvas keeps a trace of the coarse pixel lattice (every other fine pixel is a
    coarse one, the others interpolated); rolled by a random offset of its own, that trace has
    no common phase over a set of textures (each texture is a torus: a roll is the same texture)."""
    per_image = [np.random.default_rng([seed, stage, 1]).integers(0, size, 2) for seed in seeds]
    return torch.from_numpy(np.stack(per_image))


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W], shifts int64 [B, 2] -> x with image b rolled by shifts[b] = (dy, dx), as
    ``torch.roll(x[b], (dy, dx), (-2, -1))``; one gather, so its gradient is one scatter-add."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) - shifts[:, :1]) % h  # [B, H]
    cols = (torch.arange(w, device=x.device) - shifts[:, 1:]) % w  # [B, W]
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def upsample_periodic(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, n, n] canvas on a torus -> [B, C, size, size] by Fourier interpolation (its spectrum
    zero-padded). Shift-invariant: an interpolating kernel (bicubic) leaves the fine grain of the
    coarse canvas sharper on its pixel lattice than between, a grid at the scale factor's period
    (4 px from 56 to 224 px) that the last stage's few steps did not erase.

    An even canvas's Nyquist row and column (period 2 coarse px) are dropped: that cosine is
    locked to the coarse lattice (an 8 px grating from 56 to 224 px, whose gradient magnitude
    has a 4 px period at the same phase in every texture)."""
    n = x.shape[-1]
    if size < n:
        raise ValueError(f"upsample_periodic enlarges: {n} px -> {size} px")
    spectrum = torch.fft.fft2(x.float())  # [B, C, n, n] complex
    keep = n // 2 if n % 2 else n // 2 - 1  # frequencies 0..keep and -keep..-1
    padded = spectrum.new_zeros(*x.shape[:-2], size, size)
    for rows in (slice(0, keep + 1), slice(-keep, None)):
        for cols in (slice(0, keep + 1), slice(-keep, None)):
            padded[..., rows, cols] = spectrum[..., rows, cols]
    return torch.fft.ifft2(padded).real.mul_((size / n) ** 2).to(x.dtype)


class _GramProduct(torch.autograd.Function):
    """f [B, C, N] -> f f^T [B, C, C] in f's dtype (matmul accumulates in fp32).

    Backward uses that the product is symmetric: one matmul (dG + dG^T) f instead of
    autograd's two matmuls and the sum of two [B, C, N] tensors.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(f)
        return torch.bmm(f, f.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (f,) = ctx.saved_tensors
        return torch.bmm((grad + grad.transpose(1, 2)).to(f.dtype), f)


def gram(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C] float32, averaged over positions so crop and texture sizes compare.

    float32 features: an fp32 product. bf16 features (accelerated): a bf16 product with fp32
    accumulation, no fp32 copy of the (large, early) feature maps; only the C x C result is
    widened.
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    if f.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        f = f.float()
    with torch.autocast(features.device.type, enabled=False):
        return _GramProduct.apply(f).float() / (h * w)


def gram_loss(grams: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Per-image relative Gram error summed over layers: [B]. Relative, so layers weigh alike."""
    total = 0.0
    for g, t in zip(grams, targets):
        total = total + ((g - t) ** 2).sum(dim=(1, 2)) / (t**2).sum(dim=(1, 2)).clamp_min(1e-12)
    return total


class TextureSynthesizer:
    """Holds the encoder on its device; call it with crops and per-image seeds."""

    def __init__(self, config: SynthesisConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.accelerated = (
            self.device.type == "cuda" if config.accelerated is None else config.accelerated
        )
        #: Images per batch the caller should send (``__call__`` takes any number).
        self.batch_size = config.batch_size or auto_batch_size(config.encoder, self.device)
        self.encoder = build_encoder(
            config.encoder,
            seed=config.encoder_seed,
            weights=config.weights,
            matmul_input_grad=self.device.type == "cpu",  # 1.5x on a CPU; cuDNN's on a GPU
        )
        self.encoder = self.encoder.to(self.device).eval().requires_grad_(False)
        if self.accelerated:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = (
                True  # fixed shapes per stage: pick the fastest kernels once
            )
        else:
            retain_freed_memory()  # a CPU step reuses its freed feature maps (host_memory)
        #: The per-step loss; compiled when asked. Shapes are fixed within a stage (dynamic=False):
        #: one compilation per stage size and batch size.
        self.step_loss = self.per_image_loss
        if config.compile:
            self.step_loss = torch.compile(
                self.per_image_loss,
                backend=config.compile_backend,
                mode=compile_mode(config.compile_backend),
                dynamic=False,
            )

    def features(self, x: torch.Tensor, wrap: bool = True) -> list[torch.Tensor]:
        """``wrap``: x is a canvas (a torus: circular padding), else crops (the encoder's own)."""
        if self.accelerated:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.encoder(x, wrap=wrap)
        return self.encoder(x, wrap=wrap)

    def per_image_loss(self, x: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """[B] Gram loss of each canvas of ``x`` against its targets."""
        return gram_loss([gram(f) for f in self.features(x)], targets)

    def targets(self, crops: torch.Tensor, size: int) -> list[torch.Tensor]:
        """Pooled Gram matrices of both crops at the scale of a ``size`` px texture."""
        b = crops.shape[0]
        flat = crops.reshape(b * 2, 3, CROP_SIZE, CROP_SIZE)
        crop_px = round(CROP_SIZE * size / TEXTURE_SIZE)
        if crop_px != CROP_SIZE:
            flat = F.interpolate(
                flat, size=(crop_px, crop_px), mode="bilinear", antialias=True, align_corners=False
            )
        with torch.no_grad():
            return [
                gram(f).reshape(b, 2, f.shape[1], f.shape[1]).mean(dim=1)
                for f in self.features(flat, wrap=False)
            ]

    def _init(self, crops: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Per-image seeded noise around the crops' mean colour: an image's start ignores its batch."""
        size = self.config.sizes[0]
        noise = torch.stack(
            [torch.randn(3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )
        mean = crops.mean(dim=(1, 3, 4)).cpu().view(-1, 3, 1, 1)
        return (mean + self.config.init_noise * noise).clamp(0, 1).to(self.device)

    def __call__(self, crops: np.ndarray | torch.Tensor, seeds: list[int]) -> SynthesisResult:
        """crops: uint8 [B, 2, 96, 96, 3] (or float [B, 2, 3, 96, 96] in [0, 1]); one seed per image."""
        crops_t = torch.as_tensor(crops)
        if crops_t.dtype == torch.uint8:
            crops_t = crops_t.permute(0, 1, 4, 2, 3).float() / 255.0
        if crops_t.shape[1:] != (2, 3, CROP_SIZE, CROP_SIZE):
            raise ValueError(f"crops must be [B, 2, 96, 96, 3] uint8, got {tuple(crops_t.shape)}")
        if len(seeds) != crops_t.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {crops_t.shape[0]} images")
        try:
            return self._synthesize(crops_t.to(self.device), seeds)
        except torch.OutOfMemoryError:
            if len(seeds) == 1:
                raise
        # The batch did not fit (the automatic batch size is an estimate): halve it, for this
        # call and the next ones. Images are independent, so the split changes no texture.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = (len(seeds) + 1) // 2
        self.batch_size = min(self.batch_size, half)
        parts = [self(crops_t[:half], seeds[:half]), self(crops_t[half:], seeds[half:])]
        return SynthesisResult(
            textures=np.concatenate([p.textures for p in parts]),
            losses=np.concatenate([p.losses for p in parts]),
        )

    def _synthesize(self, crops_t: torch.Tensor, seeds: list[int]) -> SynthesisResult:
        """crops_t float [B, 2, 3, 96, 96] on the device."""
        x = self._init(crops_t, seeds)  # [B, 3, s0, s0] float32
        memory_format = torch.channels_last if self.accelerated else torch.contiguous_format
        stages = zip(self.config.sizes, self.config.steps, self.config.stage_lrs())
        for stage, (size, steps, lr) in enumerate(stages):
            if x.shape[-1] != size:
                x = upsample_periodic(x.detach(), size).clamp(0, 1)
                x = roll_each(x, stage_offsets(seeds, stage, size).to(self.device))
            targets = self.targets(crops_t, size)
            shifts = canvas_shifts(seeds, stage, steps, size).to(self.device)  # [steps, B, 2]
            x = x.detach().contiguous(memory_format=memory_format).requires_grad_(True)
            # fused: one kernel for the whole update, no per-step temporaries (CPU and CUDA)
            optimizer = torch.optim.Adam([x], lr=lr, fused=True)
            # Decay within each stage: big moves early, then settle (fewer steps for the same loss).
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, stage_schedule(steps, self.config.warmup, self.config.lr_floor)
            )
            for t in range(steps):  # no host sync inside: the loss is read once, at the end
                optimizer.zero_grad(set_to_none=True)
                # each step sees its canvas rolled: no pixel keeps one phase of the strides
                per_image = self.step_loss(roll_each(x, shifts[t]), targets)  # [B]
                per_image.sum().backward()  # a sum, so each image's gradient is its own
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
        with torch.no_grad():
            losses = self.per_image_loss(x, targets).float().cpu()
        textures = (
            (x.detach() * 255.0 + 0.5)
            .clamp(0, 255)
            .to(torch.uint8)
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
        )
        return SynthesisResult(textures=np.ascontiguousarray(textures), losses=losses.numpy())
