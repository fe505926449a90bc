"""Textures/s and quality of the default synthesis vs the naive reference, in one run.

Reference (Gatys et al. style): one image at a time, full 224 px resolution from the
start, L-BFGS for a few hundred iterations. Default: the batched coarse-to-fine Adam
engine. Both use the same encoder and are scored by the same network-free measure.

    python benchmarks/bench_synthesis.py [--device cuda] [--encoder vgg19 --weights FILE]
"""
from __future__ import annotations

import time
from dataclasses import replace

import click
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline import quality
from pipeline.images import make_crops
from pipeline.sources import embedded_listing
from pipeline.synthesis import SynthesisConfig, TextureSynthesizer, gram, gram_loss


def reference_lbfgs(synth: TextureSynthesizer, crops: np.ndarray, seed: int, iterations: int) -> np.ndarray:
    """One image, 224 px from the start, torch L-BFGS with strong Wolfe line search."""
    c = torch.as_tensor(crops[None]).permute(0, 1, 4, 2, 3).float().div(255).to(synth.device)
    targets = synth.targets(c, 224)
    g = torch.Generator().manual_seed(seed)
    mean = c.mean(dim=(1, 3, 4)).view(1, 3, 1, 1)
    x = (mean + 0.15 * torch.randn(1, 3, 224, 224, generator=g).to(synth.device)).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = gram_loss([gram(f) for f in synth.features(x)], targets).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (x.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


def flops_per_texture(synth: TextureSynthesizer) -> float:
    """Counted FLOPs of one texture's optimisation (forward + backward per step, all stages)."""
    total = 0.0
    for size, steps in zip(synth.config.sizes, synth.config.steps):
        x = torch.rand(1, 3, size, size, device=synth.device, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            sum(gram(f).sum() for f in synth.features(x)).backward()
        total += counter.get_total_flops() * steps
    return total


def scores(textures, crops, others) -> tuple[float, float]:
    n = len(textures)
    measured = [quality.measure(textures[i], crops[i], others[i], textures[(i + 1) % n]) for i in range(n)]
    return float(np.mean([q.noise_ratio for q in measured])), float(max(q.layout for q in measured))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@click.command()
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--encoder", type=click.Choice(["random", "vgg19"]), default="random", show_default=True)
@click.option("--weights", default=None)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option("--steps", default=None, help="steps per stage, e.g. 120,40,14 [default: the engine's default]")
@click.option("--repeat", type=int, default=1, show_default=True, help="batches timed for the default engine")
@click.option("--reference-images", type=int, default=3, show_default=True)
@click.option("--reference-iterations", type=int, default=300, show_default=True)
def main(device, encoder, weights, batch_size, steps, repeat, reference_images, reference_iterations) -> None:
    listing = embedded_listing()
    crops, others = [], []
    for i in range(batch_size):
        data = open(listing.images[i % len(listing.images)].path, "rb").read()
        crops.append(make_crops(data, np.random.default_rng(i)).pixels)
        others.append(make_crops(data, np.random.default_rng(1000 + i)).pixels[1])
    crops, others = np.stack(crops), np.stack(others)
    config = SynthesisConfig(encoder=encoder, weights=weights, batch_size=batch_size)
    if steps:
        config = replace(config, steps=tuple(int(s) for s in steps.split(",")))
    synth = TextureSynthesizer(config, device)
    synth(crops[:2], [0, 1])  # warm-up (cuDNN autotune, allocator)
    sync(device)
    start = time.perf_counter()
    for r in range(repeat):
        result = synth(crops, [r * batch_size + i for i in range(batch_size)])
    sync(device)
    fast_rate = repeat * batch_size / (time.perf_counter() - start)
    fast_ratio, fast_layout = scores(result.textures[:reference_images], crops[:reference_images], others)

    start = time.perf_counter()
    reference = np.stack([reference_lbfgs(synth, crops[i], i, reference_iterations) for i in range(reference_images)])
    sync(device)
    ref_rate = reference_images / (time.perf_counter() - start)
    ref_ratio, ref_layout = scores(reference, crops[:reference_images], others)
    all_ratio, _ = scores(result.textures, crops, others)

    flops = flops_per_texture(synth)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}   encoder: {encoder}   default config: sizes {synth.config.sizes} steps {synth.config.steps}")
    print(f"{'':34s}{'textures/s':>12s}{'noise ratio':>13s}{'max layout':>12s}")
    print(f"{'reference (1 img, 224px, L-BFGS ' + str(reference_iterations) + ')':34s}{ref_rate:12.3f}{ref_ratio:13.3f}{ref_layout:12.3f}")
    print(f"{'default (batch ' + str(batch_size) + ', coarse-to-fine)':34s}{fast_rate:12.3f}{fast_ratio:13.3f}{fast_layout:12.3f}")
    print(f"speed-up: {fast_rate / ref_rate:.1f}x   (quality on the same {reference_images} images; "
          f"lower noise ratio is better; default on all {batch_size}: {all_ratio:.3f})")
    print(f"work: {flops / 1e9:.1f} GFLOP per texture -> {flops * fast_rate / 1e12:.3f} TFLOP/s achieved")


if __name__ == "__main__":
    main()
