"""A texture set's spatial fingerprint: what tells a synthesised texture from a photo by position.

A synthesis can leave the same low-level signature in every texture it makes, whatever the
image: a grid at the period of a stride of its encoder, or a frame near the border where its
padding sees the edge. A network can learn that signature instead of shape. All measures here
read the *normalised gradient map* of an image: the gradient magnitude of its grey image,
divided by its own mean (so a busy and a flat image weigh alike).

* ``period_spike`` (per texture): in the map's 2-D power spectrum, the power at the axis
  frequencies of a ``period`` px grid (±1/period cycles/px along x or y) over the median power
  of that radial band. A photo's edges spread over all directions: ~1-3. A grid: tens.
* ``frame_ratio`` (over a set): on the maps averaged over the set, the mean energy (squared
  value) in the outer ``band`` px over the mean energy inside. Real crops: below 1 (objects sit
  near the middle); a frame: above 1.
* ``profile_period_share`` (over a set): the averaged map's row and column profiles (its means
  over rows and over columns); the larger of their shares of power (mean removed) at the
  ``period`` px frequency. Real crops: well under 1 %; a set of stationary textures cannot go
  under ~1 / (W / 2) (0.9 % at 224 px), grid or not: reported, not judged;
* ``profile_period_spike`` (over a set): the same bin over the median of the profile's other
  frequencies: ~1 for a set without a grid at a fixed phase (textures or photos), far more with.

See docs/pipeline.md ("Spatial fingerprint") for the figures and the thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

#: The period of the grid looked for, px (a 2x2 pooling twice: the random encoder's level 2).
PERIOD = 4
#: Width of the border band of ``frame_ratio``, px.
FRAME_BAND = 32
#: Grey from RGB (ITU-R BT.601 luma).
LUMA = np.array([0.299, 0.587, 0.114])

#: Adopted thresholds on the default job (docs/pipeline.md), tested on the demo photos and the
#: miniature world's procedural images: median per-texture spike, set frame ratio, set profile
#: spike. (A profile share of 0.5 % was the first aim: under the floor of any stationary set.)
MAX_MEDIAN_SPIKE = 6.0
MAX_FRAME_RATIO = 1.05
MAX_PROFILE_SPIKE = 8.0


def gradient_maps(images: np.ndarray) -> np.ndarray:
    """uint8 or float [N, H, W, 3] (or one [H, W, 3]) -> float64 [N, H, W]: gradient magnitude of
    the grey image (central differences, the border pixels repeated outside: a one-sided
    difference there would weigh the border rows twice and read as a frame) over its own mean."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] or [H, W, 3], got {x.shape}")
    grey = np.pad(x @ LUMA, ((0, 0), (1, 1), (1, 1)), mode="edge")  # [N, H + 2, W + 2]
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)[:, 1:-1, 1:-1]  # [N, H, W]
    mean = magnitude.mean(axis=(1, 2), keepdims=True)
    return magnitude / np.maximum(mean, 1e-12)  # a flat image: all zeros


def period_spike(maps: np.ndarray, period: int = PERIOD) -> np.ndarray:
    """float [N, H, W] normalised gradient maps -> float64 [N]: power at the axis frequencies of a
    ``period`` px grid over the median power of the radial band through them (one bin wide)."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    n, h, w = maps.shape
    if min(h, w) < 2 * period:
        raise ValueError(f"maps of {h}x{w} px are too small for a {period} px period")
    centred = maps - maps.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2  # [N, H, W]
    ky, kx = round(h / period), round(w / period)  # the axis bins (exact when period divides)
    axis = (power[:, ky, 0] + power[:, -ky, 0] + power[:, 0, kx] + power[:, 0, -kx]) / 4  # [N]
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")  # cycles/px
    radius = np.hypot(fy, fx)
    band = np.abs(radius - 1.0 / period) <= 1.0 / min(h, w)  # [H, W], a ring one bin wide
    median = np.median(power[:, band], axis=1)  # [N]
    return axis / np.maximum(median, 1e-30)


def frame_ratio(mean_map: np.ndarray, band: int = FRAME_BAND) -> float:
    """float [H, W] gradient map averaged over a set -> mean energy (squared value) of the outer
    ``band`` px over the mean energy inside them."""
    m = np.asarray(mean_map, dtype=np.float64)
    h, w = m.shape
    if min(h, w) <= 2 * band:
        raise ValueError(f"a {h}x{w} map has no inside within a {band} px border band")
    inside = np.zeros((h, w), dtype=bool)
    inside[band:-band, band:-band] = True
    energy = m**2
    return float(energy[~inside].mean() / max(energy[inside].mean(), 1e-30))


def profile_period_share(mean_map: np.ndarray, period: int = PERIOD) -> float:
    """float [H, W] gradient map averaged over a set -> the larger, over its row profile [W] and
    its column profile [H], of the share of the profile's power (mean removed) at ``period`` px."""
    m = np.asarray(mean_map, dtype=np.float64)
    shares = []
    for profile in (m.mean(axis=0), m.mean(axis=1)):  # [W], [H]
        power = np.abs(np.fft.rfft(profile - profile.mean())) ** 2
        total = power[1:].sum()
        shares.append(power[round(len(profile) / period)] / total if total > 0 else 0.0)
    return float(max(shares))


def profile_period_spike(mean_map: np.ndarray, period: int = PERIOD) -> float:
    """float [H, W] averaged map -> the larger, over its row and column profiles, of the power at
    ``period`` px over the median power of the profile's other frequencies. A set of stationary
    textures has a flat profile spectrum: every bin holds ~1 / (W / 2) of the power whatever the
    set's size, so ``profile_period_share`` reads ~0.9 % at 224 px without any grid; this reads
    ~1 for them and far more for a grid at a fixed phase."""
    m = np.asarray(mean_map, dtype=np.float64)
    ratios = []
    for profile in (m.mean(axis=0), m.mean(axis=1)):  # [W], [H]
        power = np.abs(np.fft.rfft(profile - profile.mean())) ** 2
        k = round(len(profile) / period)
        others = np.delete(power[1:], k - 1)
        ratios.append(power[k] / max(float(np.median(others)), 1e-30))
    return float(max(ratios))


@dataclass
class Fingerprint:
    textures: int  # images measured
    median_spike: float  # median over images of period_spike
    frame_ratio: float
    profile_share: float  # profile_period_share, a fraction (0.009 = 0.9 %): reported only
    profile_spike: float  # profile_period_spike

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def within_thresholds(self) -> bool:
        return (
            self.median_spike <= MAX_MEDIAN_SPIKE
            and self.frame_ratio <= MAX_FRAME_RATIO
            and self.profile_spike <= MAX_PROFILE_SPIKE
        )


class FingerprintAccumulator:
    """Streams images (any number per call) into a ``Fingerprint`` without keeping them: the
    per-image spikes and the running sum of the maps of the first image size seen (an image of
    another size counts in the spikes only, and in ``other_sizes``)."""

    def __init__(self, period: int = PERIOD, band: int = FRAME_BAND):
        self.period, self.band = period, band
        self.spikes: list[float] = []
        self.map_sum: np.ndarray | None = None  # float64 [H, W]
        self.summed = 0
        self.other_sizes = 0

    def add(self, images: np.ndarray) -> None:
        """uint8 [N, H, W, 3] or [H, W, 3]."""
        maps = gradient_maps(images)  # [N, H, W]
        self.spikes.extend(period_spike(maps, self.period).tolist())
        if self.map_sum is None:
            self.map_sum = np.zeros(maps.shape[1:])
        if maps.shape[1:] == self.map_sum.shape:
            self.map_sum += maps.sum(axis=0)
            self.summed += len(maps)
        else:
            self.other_sizes += len(maps)

    def result(self) -> Fingerprint | None:
        """None before any image."""
        if not self.spikes:
            return None
        mean_map = self.map_sum / self.summed
        return Fingerprint(
            textures=len(self.spikes),
            median_spike=float(np.median(self.spikes)),
            frame_ratio=frame_ratio(mean_map, self.band),
            profile_share=profile_period_share(mean_map, self.period),
            profile_spike=profile_period_spike(mean_map, self.period),
        )


def fingerprint(images: np.ndarray | Iterable[np.ndarray]) -> Fingerprint | None:
    """uint8 [N, H, W, 3] (or an iterable of [H, W, 3]) -> the set's Fingerprint (None if empty)."""
    acc = FingerprintAccumulator()
    for image in images:
        acc.add(image)
    return acc.result()


def photo_crops(
    photo: np.ndarray, count: int, rng: np.random.Generator, size: int = 224
) -> np.ndarray:
    """uint8 [H, W, 3] photo -> uint8 [count, size, size, 3]: square crops at random places, of
    random sides from size / 2 to the photo's short side, resized (anti-aliased) to ``size``:
    the real-photo reference the measures are read against."""
    from PIL import Image

    h, w = photo.shape[:2]
    short = min(h, w)
    if short < size // 2:
        raise ValueError(f"a {w}x{h} photo is under the {size // 2} px smallest crop")
    crops = []
    for _ in range(count):
        side = int(rng.integers(size // 2, short + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(photo[top : top + side, left : left + side]))
        crops.append(np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS)))
    return np.stack(crops)
