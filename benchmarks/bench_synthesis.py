"""Textures/s and quality of the default synthesis vs the naive reference, in one run.

Reference (Gatys et al. style): one image at a time, full 224 px resolution from the
start, L-BFGS for a few hundred iterations. Default: the batched coarse-to-fine Adam
engine. Both use the same encoder and are scored by the same network-free measure.

    python benchmarks/bench_synthesis.py [--device cuda] [--encoder vgg19 --weights FILE | --random-weights]
        [--json FILE]

Also reported: the final Gram loss at fixed steps (quality for any encoder, random VGG19
weights included) and the achieved TFLOP/s as a share of a plain matmul's rate on the same
device in the same run (bf16 when the accelerated path runs, else fp32).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nsneg.datasets_manifest.format.files import atomic_write_json, atomic_write_text
from nsneg.pipeline import quality
from nsneg.pipeline.images import make_crops
from nsneg.pipeline.sources import embedded_listing
from nsneg.pipeline.synthesis import SynthesisConfig, TextureSynthesizer, gram

#: The CPU target: the default engine this many times the reference's textures/s, at an equal or better noise ratio.
TARGET_SPEEDUP = 10.0


def reference_lbfgs(
    synth: TextureSynthesizer, crops: np.ndarray, seed: int, iterations: int
) -> np.ndarray:
    """One image, 224 px from the start, torch L-BFGS with strong Wolfe line search."""
    c = torch.as_tensor(crops[None]).permute(0, 1, 4, 2, 3).float().div(255).to(synth.device)
    targets = synth.targets(c, 224)
    g = torch.Generator().manual_seed(seed)
    mean = c.mean(dim=(1, 3, 4)).view(1, 3, 1, 1)
    x = (
        (mean + 0.15 * torch.randn(1, 3, 224, 224, generator=g).to(synth.device))
        .clamp(0, 1)
        .requires_grad_(True)
    )
    opt = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = synth.per_image_loss(x, targets).sum()
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


def matmul_rate(device: str, dtype: torch.dtype, n: int = 4096, repeat: int = 10) -> float:
    """FLOP/s of a plain square matmul on ``device``: the anchor that achieved TFLOP/s is read against."""
    if not device.startswith("cuda"):
        n, repeat = 1024, 5  # a CPU does not need a 4096 matmul to reach its rate
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    sync(device)
    return 2 * n**3 * repeat / (time.perf_counter() - start)


def random_vgg19_file() -> str:
    """A torchvision VGG19 state_dict with random values in a temporary file: speed only."""
    import tempfile

    from torchvision.models import vgg19

    path = Path(tempfile.mkdtemp()) / "vgg19-random.pth"
    torch.save(vgg19(weights=None).state_dict(), path)
    return str(path)


def scores(textures, crops, others) -> tuple[float, float]:
    n = len(textures)
    measured = [
        quality.measure(textures[i], crops[i], others[i], textures[(i + 1) % n]) for i in range(n)
    ]
    return float(np.mean([q.noise_ratio for q in measured])), float(max(q.layout for q in measured))


def profile_batch(synth: TextureSynthesizer, crops: np.ndarray, device: str, rows: int = 30) -> str:
    """torch.profiler of one batch: the operators by self time on the device (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        synth(crops, list(range(len(crops))))
        sync(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@click.command()
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option(
    "--encoder", type=click.Choice(["random", "vgg19"]), default="random", show_default=True
)
@click.option("--weights", default=None)
@click.option(
    "--random-weights", is_flag=True, help="vgg19 with random values (speed and Gram loss only)"
)
@click.option("--batch-size", type=int, default=10, show_default=True)
@click.option(
    "--steps", default=None, help="steps per stage, e.g. 120,40,14 [default: the engine's default]"
)
@click.option(
    "--matmul-input-grad/--library-input-grad",
    default=None,
    help="random encoder: the pixels' gradient as a matmul plus shifted adds, or the convolution "
    "library's [default: the synthesiser's choice, matmul on a CPU only]",
)
@click.option("--accelerated/--no-accelerated", default=None, help="[default: on CUDA only]")
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the per-step loss (SynthesisConfig.compile; CUDA graphs on CUDA)",
)
@click.option(
    "--compile-backend",
    default="inductor",
    show_default=True,
    help='with --compile; "aot_eager": traced, no code generation',
)
@click.option(
    "--repeat", type=int, default=1, show_default=True, help="batches timed for the default engine"
)
@click.option(
    "--reference-images",
    type=int,
    default=10,
    show_default=True,
    help="images the reference makes (quality compared on them; 3 is too few: one photo can "
    "swing the mean by 0.07); 0: no reference run",
)
@click.option("--reference-iterations", type=int, default=300, show_default=True)
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="profile one more batch of the default engine (torch.profiler) and write the operators "
    "that take the most time to this text file",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write the figures to this JSON file",
)
def main(
    device,
    encoder,
    weights,
    random_weights,
    batch_size,
    steps,
    matmul_input_grad,
    accelerated,
    compile_,
    compile_backend,
    repeat,
    reference_images,
    reference_iterations,
    profile_path,
    json_path,
) -> None:
    reference_images = min(reference_images, batch_size)  # compared on the same images
    if random_weights:
        weights = random_vgg19_file()
    listing = embedded_listing()
    crops, others = [], []
    for i in range(batch_size):
        data = open(listing.images[i % len(listing.images)].path, "rb").read()
        crops.append(make_crops(data, np.random.default_rng(i)).pixels)
        others.append(make_crops(data, np.random.default_rng(1000 + i)).pixels[1])
    crops, others = np.stack(crops), np.stack(others)
    config = SynthesisConfig(
        encoder=encoder,
        weights=weights,
        batch_size=batch_size,
        accelerated=accelerated,
        compile=compile_,
        compile_backend=compile_backend,
    )
    if steps:
        config = replace(config, steps=tuple(int(s) for s in steps.split(",")))
    synth = TextureSynthesizer(config, device)
    if matmul_input_grad is not None and encoder == "random":
        synth.encoder.matmul_input_grad = matmul_input_grad
    matmul_input_grad = getattr(synth.encoder, "matmul_input_grad", None)  # None for VGG19
    # warm-up: cuDNN autotune, allocator; with --compile the timed batch's shapes (one compilation
    # and, with CUDA graphs, one capture per stage)
    warm = batch_size if compile_ else 2
    synth(crops[:warm], list(range(warm)))
    sync(device)
    start = time.perf_counter()
    for r in range(repeat):
        result = synth(crops, [r * batch_size + i for i in range(batch_size)])
    sync(device)
    fast_rate = repeat * batch_size / (time.perf_counter() - start)
    n_quality = min(reference_images or 3, batch_size)
    fast_ratio, fast_layout = scores(result.textures[:n_quality], crops[:n_quality], others)
    # the same call when quality is already compared on the whole batch
    all_ratio = fast_ratio if n_quality == batch_size else scores(result.textures, crops, others)[0]

    flops = flops_per_texture(synth)
    anchor_dtype = torch.bfloat16 if synth.accelerated else torch.float32
    peak = matmul_rate(device, anchor_dtype)
    name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    figures = {
        "device": name,
        "encoder": encoder,
        "random_weights": bool(random_weights),
        "accelerated": synth.accelerated,
        "matmul_input_grad": matmul_input_grad,
        "compile": compile_backend if compile_ else None,
        "batch_size": batch_size,
        "sizes": list(synth.config.sizes),
        "steps": list(synth.config.steps),
        "textures_per_s": fast_rate,
        "final_gram_loss": float(np.mean(result.losses)),
        "noise_ratio": fast_ratio,
        "noise_ratio_all": all_ratio,
        "max_layout": fast_layout,
        "gflop_per_texture": flops / 1e9,
        "tflops": flops * fast_rate / 1e12,
        "matmul_tflops": peak / 1e12,
        "matmul_dtype": str(anchor_dtype).removeprefix("torch."),
    }
    print(
        f"device: {name}   encoder: {encoder}{' (random weights)' if random_weights else ''}   "
        f"accelerated: {synth.accelerated}   "
        f"matmul input grad: {matmul_input_grad}   "
        f"compiled: {compile_backend if compile_ else 'no'}   sizes {synth.config.sizes} steps {synth.config.steps}"
    )
    print(f"{'':34s}{'textures/s':>12s}{'noise ratio':>13s}{'max layout':>12s}")
    if reference_images:
        start = time.perf_counter()
        reference = np.stack(
            [
                reference_lbfgs(synth, crops[i], i, reference_iterations)
                for i in range(reference_images)
            ]
        )
        sync(device)
        ref_rate = reference_images / (time.perf_counter() - start)
        ref_ratio, ref_layout = scores(reference, crops[:reference_images], others)
        figures.update(
            reference_textures_per_s=ref_rate,
            reference_noise_ratio=ref_ratio,
            reference_max_layout=ref_layout,
            speedup=fast_rate / ref_rate,
        )
        print(
            f"{'reference (1 img, 224px, L-BFGS ' + str(reference_iterations) + ')':34s}{ref_rate:12.3f}"
            f"{ref_ratio:13.3f}{ref_layout:12.3f}"
        )
    print(
        f"{'default (batch ' + str(batch_size) + ', coarse-to-fine)':34s}{fast_rate:12.3f}{fast_ratio:13.3f}"
        f"{fast_layout:12.3f}"
    )
    if reference_images:
        print(
            f"speed-up: {fast_rate / ref_rate:.1f}x   (quality on the same {reference_images} images; "
            f"lower noise ratio is better; default on all {batch_size}: {all_ratio:.3f})"
        )
        met = fast_rate / ref_rate >= TARGET_SPEEDUP and fast_ratio <= ref_ratio
        figures["target_met"] = met
        print(
            f"target (>= {TARGET_SPEEDUP:.0f}x the reference at an equal or better noise ratio): "
            f"{'MET' if met else 'NOT MET'} ({fast_rate / ref_rate:.1f}x, noise ratio "
            f"{fast_ratio:.3f} vs {ref_ratio:.3f})"
        )
    print(f"final Gram loss (mean over the batch, fixed steps): {figures['final_gram_loss']:.4f}")
    print(
        f"work: {flops / 1e9:.1f} GFLOP per texture -> {figures['tflops']:.3f} TFLOP/s achieved = "
        f"{100 * flops * fast_rate / peak:.1f} % of this device's {figures['matmul_dtype']} matmul rate "
        f"({peak / 1e12:.2f} TFLOP/s, measured now)"
    )
    if profile_path:
        table = profile_batch(synth, crops, device)
        atomic_write_text(profile_path, table + "\n")
        print(f"profile of one batch (top operators by self time) -> {profile_path}")
        print("\n".join(table.splitlines()[:14]))
    if json_path:
        atomic_write_json(json_path, figures)


if __name__ == "__main__":
    main()
