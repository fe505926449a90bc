"""Feature encoders whose Gram matrices define a texture.

* ``vgg19``: ImageNet-pretrained VGG19 with average pooling, layers relu1_1 ... relu5_1
  (Gatys, Ecker & Bethge 2015). Weights come from a file the user names or torchvision's
  (``VGG19_Weights.IMAGENET1K_V1``) in the torch hub cache, downloaded there with a progress bar
  and checked against the hash in their file name when missing -- unless offline
  (``--offline`` or ``NSNEG_OFFLINE=1``: then a missing file is an error). Never silently random.
* ``random``: a single layer of random filters applied over an image pyramid
  (Ustyuzhaninov et al., ICLR 2017 showed random multi-scale filters already make
  natural textures). Deterministic from a seed, no download: the demo and tests use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD

#: set to 1 to refuse downloads (as ``--offline``)
OFFLINE_ENV = "NSNEG_OFFLINE"
VGG19_LAYERS = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1", 29: "relu5_1"}


class WeightsNotFound(FileNotFoundError):
    pass


#: Padding of the canvas being synthesised (``wrap=True``): a stationary texture on a torus, so
#: no pixel is near a border and no frame forms there. Crops (the targets) are padded by
#: reflection: their border features then look like their inside, as every position of the torus
#: does (replication gives the targets flat border features no torus position can match; circular
#: crop padding makes seams, axis-aligned edges the canvas then learns).
CANVAS_PADDING = "circular"
CROP_PADDING = "reflect"
#: Binomial low-pass of the random encoder's 2x downsampling (outer product, sums to 1): a box
#: pool's gradient is the coarse gradient repeated in 2x2 blocks, a grid at the pool's period.
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def index_pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """``F.pad(x, pad, mode)`` for "replicate", "reflect" and "circular" as two index_selects:
    the same values.

    Used under torch.compile: inductor's compiled backward of replication_pad2d expects a
    contiguous gradient where the eager kernel returns a channels_last one (torch 2.14, CPU:
    a size/stride assertion at run time). ``pad``: (left, right, top, bottom) as F.pad's.
    """
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    rows = torch.arange(-top, h + bottom, device=x.device)
    cols = torch.arange(-left, w + right, device=x.device)
    if mode == "circular":
        rows, cols = rows % h, cols % w
    elif mode == "replicate":
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    elif mode == "reflect":  # mirrored about the edge pixel (not repeated), folded again if
        rows, cols = _reflect_index(rows, h), _reflect_index(cols, w)  # the pad exceeds the size
    else:
        raise ValueError(f"index_pad pads 'replicate', 'reflect' or 'circular', not {mode!r}")
    return x.index_select(-2, rows).index_select(-1, cols)


def _reflect_index(index: torch.Tensor, n: int) -> torch.Tensor:
    """Positions -> indices into n pixels mirrored about the edge pixels, with period 2 (n - 1)."""
    if n == 1:
        return torch.zeros_like(index)
    index = index % (2 * (n - 1))
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """F.pad, or ``index_pad`` under torch.compile or where F.pad cannot reflect (a pad as wide
    as the image: the coarsest level of a small crop); same values where both apply."""
    if torch.compiler.is_compiling():
        return index_pad(x, pad, mode)
    if mode == "reflect" and max(pad) >= min(x.shape[-2:]):
        return index_pad(x, pad, mode)
    return F.pad(x, pad, mode=mode)


def blur_downsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, ceil(H / 2), ceil(W / 2)]: a 4x4 binomial low-pass at stride 2
    (anti-aliased, unlike a 2x2 box pool), the border padded by ``mode``."""
    c, (h, w) = x.shape[1], x.shape[-2:]
    taps = torch.tensor(BLUR_TAPS, dtype=x.dtype, device=x.device)
    kernel = (taps[:, None] * taps[None, :]) / taps.sum() ** 2  # [4, 4]
    padded = pad(x, (1, 1 + w % 2, 1, 1 + h % 2), mode)
    return F.conv2d(padded, kernel.expand(c, 1, 4, 4), stride=2, groups=c)


class _MatmulInputGradConv(torch.autograd.Function):
    """``F.conv2d(x, weight, bias)`` (no padding, stride 1) whose input gradient is one matmul and
    k^2 shifted adds: cols = W^T g [B, k*k*C, H*W], then each (i, j) column block added into the
    input's window at offset (i, j). oneDNN's own input gradient for a 3-channel input is slow on a
    CPU: the random encoder's forward and backward took 270 ms here against 172 ms (10 images at
    224 px, 2 cores). No gradient for ``weight`` or ``bias`` (the encoders' are fixed)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(weight)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        out_c, in_c, k, _ = weight.shape
        b, _, h, w = grad.shape
        # rows ordered (i, j, c) and contiguous: each offset's block below is one contiguous
        # [C, h, w] run per image, and the matmul gets a plain row-major left operand
        w_t = weight.permute(2, 3, 1, 0).reshape(k * k * in_c, out_c).contiguous().to(grad.dtype)
        cols = torch.matmul(w_t, grad.reshape(b, out_c, h * w)).view(b, k, k, in_c, h, w)
        # accumulated in float32 whatever the gradient's dtype (bf16 under autocast)
        grad_x = torch.zeros(ctx.x_shape, dtype=torch.float32, device=grad.device)
        for i in range(k):
            for j in range(k):
                grad_x[:, :, i : i + h, j : j + w] += cols[:, i, j]
        return grad_x.to(ctx.x_dtype), None, None


class RandomMultiScaleEncoder(nn.Module):
    """Random ReLU filters over a 4-level image pyramid: receptive fields 5, 10, 20, 40 px.

    Each level is the previous one low-passed and subsampled (``blur_downsample``); the border
    is padded circularly for the canvas (``wrap=True``), by replication for crops.

    The pyramid gives large receptive fields for the price of small kernels, which keeps
    the encoder cheap enough for CPU synthesis. All buffers are rank 4 or less, so the
    module converts to channels_last like any CNN.

    ``matmul_input_grad``: the pixels' gradient through each convolution as one matmul and
    shifted adds (``_MatmulInputGradConv``, 1.5x faster on a CPU) instead of the convolution
    library's. The synthesiser turns it on for a CPU and leaves cuDNN's on a GPU (unmeasured
    there); compiled code always takes the library's (inductor plans it). Same values either way.
    """

    def __init__(
        self,
        seed: int = 0,
        channels: int = 64,
        kernel: int = 5,
        levels: int = 4,
        matmul_input_grad: bool = False,
    ):
        super().__init__()
        self.matmul_input_grad = matmul_input_grad
        g = torch.Generator().manual_seed(seed)
        self.levels = levels
        self.kernel = kernel
        self.channels = channels
        weights = []
        for _ in range(levels):
            w = torch.randn(channels, 3, kernel, kernel, generator=g)
            w = w - w.mean(
                dim=(1, 2, 3), keepdim=True
            )  # zero-mean filters respond to structure, not brightness
            weights.append(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
        self.register_buffer(
            "weight", torch.cat(weights)
        )  # [levels * C, 3, k, k]: level l is rows l*C ... (l+1)*C
        self.register_buffer(
            "bias", 0.05 * torch.randn(levels * channels, generator=g)
        )  # [levels * C]

    def forward(self, x: torch.Tensor, wrap: bool = False) -> list[torch.Tensor]:
        """x [B, 3, H, W] in [0, 1] -> per level l: [B, C, ceil(H / 2^l), ceil(W / 2^l)].
        ``wrap``: x is a canvas on a torus (circular padding), else a crop (``CROP_PADDING``)."""
        mode = CANVAS_PADDING if wrap else CROP_PADDING
        x = x - 0.5  # centred: the zero-mean filters' sums cancel with less rounding error
        features = []
        half = self.kernel // 2
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        c = self.channels
        compiling = torch.compiler.is_compiling()
        # only where the pixels alone need a gradient: the matmul path gives none to weight or bias
        fixed = not (weight.requires_grad or bias.requires_grad)
        conv = (
            _MatmulInputGradConv.apply
            if self.matmul_input_grad and not compiling and x.requires_grad and fixed
            else F.conv2d
        )
        for level in range(self.levels):
            if level:
                x = blur_downsample(x, mode)
            padded = pad(x, (half,) * 4, mode)
            w, b = weight[level * c : (level + 1) * c], bias[level * c : (level + 1) * c]
            features.append(F.relu(conv(padded, w, b)))
        return features


class VGG19Encoder(nn.Module):
    """VGG19 features up to relu5_1, max pooling replaced by average pooling (Gatys et al.)."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        from torchvision.models import vgg19

        layers = vgg19(weights=None).features[: max(VGG19_LAYERS) + 1]
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                layers[i] = nn.AvgPool2d(2, 2)
            elif isinstance(layer, nn.ReLU):
                layers[i] = nn.ReLU(inplace=False)
        wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        wanted = {
            k[len("features.") :]: v
            for k, v in wanted.items()
            if int(k.split(".")[1]) < len(layers)
        }
        try:
            layers.load_state_dict(wanted, strict=True)
        except RuntimeError as e:
            raise ValueError(f"not a torchvision VGG19 state_dict: {e}") from None
        self.layers = layers.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, wrap: bool = False) -> list[torch.Tensor]:
        """x [B, 3, H, W] in [0, 1] -> relu1_1 ... relu5_1. ``wrap``: x is a canvas on a torus,
        its convolutions padded circularly; else torchvision's zero padding (as trained)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        features = []
        for i, layer in enumerate(self.layers):
            if wrap and isinstance(layer, nn.Conv2d):
                p = layer.padding[0]
                x = F.conv2d(pad(x, (p,) * 4, CANVAS_PADDING), layer.weight, layer.bias)
            else:
                x = layer(x)
            if i in VGG19_LAYERS:
                features.append(x)
        return features


def vgg19_url() -> str:
    """Where torchvision publishes its ImageNet VGG19 weights (its weights API's url)."""
    from torchvision.models import VGG19_Weights

    return VGG19_Weights.IMAGENET1K_V1.url


def default_vgg19_path() -> Path:
    """Where torchvision's weights API keeps them: the torch hub cache's ``checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(vgg19_url()).path).name


def offline_requested(offline: bool | None = None) -> bool:
    """``offline`` as given, else whether ``NSNEG_OFFLINE`` is set to a true value."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_vgg19_state_dict(
    weights: str | Path | None, *, offline: bool | None = None, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The VGG19 weights: from ``weights``, else torchvision's from the torch hub cache, downloaded
    there first (with a progress bar, hash-checked) when missing and not ``offline``."""
    path = Path(weights) if weights else default_vgg19_path()
    if not path.exists() and not weights and not offline_requested(offline):
        from torchvision.models import VGG19_Weights

        try:
            return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=progress, check_hash=True)
        except (
            OSError,
            RuntimeError,
        ) as e:  # URLError is an OSError; a hash mismatch a RuntimeError
            raise WeightsNotFound(
                f"VGG19 weights could not be downloaded from {vgg19_url()}: {e}\n"
                f"Copy the file to {default_vgg19_path()} or pass --weights FILE; "
                "for a run without pretrained weights use --encoder random."
            ) from None
    if not path.exists():
        reason = "" if weights else f" (offline: {OFFLINE_ENV} or --offline)"
        raise WeightsNotFound(
            f"VGG19 weights not found at {path}{reason}. Get them with\n"
            f"  curl -L -o {default_vgg19_path().name} {vgg19_url()}\n"
            f"on a machine with internet, then copy the file to {default_vgg19_path()} or pass --weights FILE.\n"
            "For a run without pretrained weights use --encoder random."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a VGG19 state_dict")
    return state


def build_encoder(
    name: str, *, seed: int = 0, weights: str | Path | None = None, matmul_input_grad: bool = False
) -> nn.Module:
    """``matmul_input_grad``: see RandomMultiScaleEncoder (VGG19 ignores it)."""
    if name == "random":
        return RandomMultiScaleEncoder(seed=seed, matmul_input_grad=matmul_input_grad)
    if name == "vgg19":
        return VGG19Encoder(load_vgg19_state_dict(weights))
    raise ValueError(f"unknown encoder {name!r}: choose 'random' or 'vgg19'")
