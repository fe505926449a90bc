"""Feature encoders whose Gram matrices define a texture.

* ``vgg19``: ImageNet-pretrained VGG19 with average pooling, layers relu1_1 ... relu5_1
  (Gatys, Ecker & Bethge 2015). Weights come from the local torch hub cache or a file
  the user names -- never downloaded at run time, never silently random.
* ``random``: a single layer of random filters applied over an image pyramid
  (Ustyuzhaninov et al., ICLR 2017 showed random multi-scale filters already make
  natural textures). Deterministic from a seed, no download: the demo and tests use it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
VGG19_LAYERS = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1", 29: "relu5_1"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFound(FileNotFoundError):
    pass


def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="replicate")`` as two index_selects: the same values.

    Used under torch.compile: inductor's compiled backward of replication_pad2d expects a
    contiguous gradient where the eager kernel returns a channels_last one (torch 2.14, CPU:
    a size/stride assertion at run time).
    """
    h, w = x.shape[-2:]
    rows = torch.arange(-pad, h + pad, device=x.device).clamp(0, h - 1)
    cols = torch.arange(-pad, w + pad, device=x.device).clamp(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


class RandomMultiScaleEncoder(nn.Module):
    """Random ReLU filters over a 4-level image pyramid: receptive fields 5, 10, 20, 40 px.

    The pyramid gives large receptive fields for the price of small kernels, which keeps
    the encoder cheap enough for CPU synthesis. All buffers are rank 4 or less, so the
    module converts to channels_last like any CNN.
    """

    def __init__(self, seed: int = 0, channels: int = 64, kernel: int = 5, levels: int = 4):
        super().__init__()
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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, 3, H, W] in [0, 1] -> per level l: [B, C, ceil(H / 2^l), ceil(W / 2^l)]."""
        x = x - 0.5  # centred: the zero-mean filters' sums cancel with less rounding error
        features = []
        pad = self.kernel // 2
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        c = self.channels
        for level in range(self.levels):
            if level:
                x = F.avg_pool2d(x, 2, ceil_mode=True)
            if torch.compiler.is_compiling():
                padded = replicate_pad(x, pad)
            else:
                padded = F.pad(x, (pad,) * 4, mode="replicate")
            features.append(
                F.relu(
                    F.conv2d(
                        padded,
                        weight[level * c : (level + 1) * c],
                        bias[level * c : (level + 1) * c],
                    )
                )
            )
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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        features = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in VGG19_LAYERS:
                features.append(x)
        return features


def default_vgg19_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def load_vgg19_state_dict(weights: str | Path | None) -> dict[str, torch.Tensor]:
    path = Path(weights) if weights else default_vgg19_path()
    if not path.exists():
        raise WeightsNotFound(
            f"VGG19 weights not found at {path}. This machine does not download them. Get them with\n"
            f"  curl -L -o {VGG19_FILE} {VGG19_URL}\n"
            f"on a machine with internet, then copy the file to {default_vgg19_path()} or pass --weights FILE.\n"
            "For a run without pretrained weights use --encoder random."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a VGG19 state_dict")
    return state


def build_encoder(name: str, *, seed: int = 0, weights: str | Path | None = None) -> nn.Module:
    if name == "random":
        return RandomMultiScaleEncoder(seed=seed)
    if name == "vgg19":
        return VGG19Encoder(load_vgg19_state_dict(weights))
    raise ValueError(f"unknown encoder {name!r}: choose 'random' or 'vgg19'")
