"""The textures' spatial fingerprint (``nsneg.pipeline.fingerprint``) and noise ratio, per image set.

Sets: textures of scikit-image photographs (``--photos`` crop pairs, cycling over the photos with
other crop seeds), textures of the miniature world's procedural images (``--per-class`` per
class, the protocol's world) and, as the reference, random crops of the same photographs resized
to 224 px. Synthesis runs with the engine's defaults unless ``--steps`` / ``--encoder`` say
otherwise; the figures are read against the thresholds of ``fingerprint``.

    python benchmarks/bench_fingerprint.py [--photos 50] [--per-class 12] [--steps 120,40,14]
        [--encoder vgg19 --random-weights] [--json FILE]
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.pipeline import fingerprint, quality
from nsneg.pipeline.images import decode_rgb, make_crops
from nsneg.pipeline.sources import EMBEDDED_PHOTOS
from nsneg.pipeline.synthesis import GENERATOR_VERSION, SynthesisConfig, TextureSynthesizer

#: scikit-image's bundled photographs (no drawings, no synthetic test patterns).
PHOTOS = EMBEDDED_PHOTOS + ("coins.png", "moon.png", "motorcycle_right.png", "retina.jpg")


def photo_bytes() -> list[bytes]:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    return [(data_dir / name).read_bytes() for name in PHOTOS]


def photo_crop_pairs(count: int) -> np.ndarray:
    """uint8 [count, 2, 96, 96, 3]: the pipeline's two crops, photo i % len(PHOTOS), seed i."""
    data = photo_bytes()
    return np.stack(
        [make_crops(data[i % len(data)], np.random.default_rng(i)).pixels for i in range(count)]
    )


def miniature_crop_pairs(per_class: int, seed: int = 0) -> np.ndarray:
    """uint8 [8 * per_class, 2, 96, 96, 3]: crops of the protocol world's pre-training images."""
    from mini_repro import protocol
    from mini_repro import world as shapes

    pairs = []
    for cls in range(len(shapes.CLASSES)):
        for i in range(per_class):
            rng = shapes.image_rng(seed, "pretrain", cls, i)
            img, _ = shapes.render(protocol.WORLD, "pretrain", cls, rng)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pairs.append(make_crops(buf.getvalue(), np.random.default_rng(i)).pixels)
    return np.stack(pairs)


def real_crops(count: int, seed: int = 0) -> np.ndarray:
    """uint8 [count, 224, 224, 3]: random crops of the photographs, resized to 224 px."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(decode_rgb(d)[0]) for d in photo_bytes()]
    return np.concatenate(
        [fingerprint.photo_crops(photos[i % len(photos)], 1, rng) for i in range(count)]
    )


def synthesise(synth: TextureSynthesizer, pairs: np.ndarray, label: str) -> np.ndarray:
    out = []
    with tqdm(total=len(pairs), desc=label, unit="tex") as bar:
        for start in range(0, len(pairs), synth.batch_size):
            batch = pairs[start : start + synth.batch_size]
            out.append(synth(batch, list(range(start, start + len(batch)))).textures)
            bar.update(len(batch))
    return np.concatenate(out)


def mean_noise_ratio(textures: np.ndarray, pairs: np.ndarray) -> float:
    return float(np.mean([quality.noise_ratio(t, p) for t, p in zip(textures, pairs)]))


def figures(images: np.ndarray) -> dict:
    fp = fingerprint.fingerprint(images)
    spikes = fingerprint.period_spike(fingerprint.gradient_maps(images))
    lo, hi = np.percentile(spikes, [25, 75])
    return {**fp.as_dict(), "spike_q25": float(lo), "spike_q75": float(hi)}


@click.command()
@click.option("--photos", type=int, default=50, show_default=True, help="photo textures (0: none)")
@click.option(
    "--per-class", type=int, default=12, show_default=True, help="miniature images per class"
)
@click.option("--steps", default=None, help="steps per stage, e.g. 40,15,5 [engine's default]")
@click.option(
    "--encoder", type=click.Choice(["random", "vgg19"]), default="random", show_default=True
)
@click.option("--weights", default=None, help="vgg19 state_dict file")
@click.option("--random-weights", is_flag=True, help="vgg19 with random values")
@click.option("--batch-size", type=int, default=None, help="[default: the engine's]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(photos, per_class, steps, encoder, weights, random_weights, batch_size, json_path):
    if random_weights:
        from bench_synthesis import random_vgg19_file

        torch.manual_seed(0)
        weights = random_vgg19_file()
    config = SynthesisConfig(encoder=encoder, weights=weights, batch_size=batch_size)
    if steps:
        config = replace(config, steps=tuple(int(s) for s in steps.split(",")))
    synth = TextureSynthesizer(config)
    sets: dict[str, dict] = {}
    start = time.perf_counter()
    sets["real photo crops"] = {**figures(real_crops(max(photos, 50))), "noise_ratio": None}
    for name, pairs in (
        ("photos", photo_crop_pairs(photos) if photos else None),
        ("miniature", miniature_crop_pairs(per_class) if per_class else None),
    ):
        if pairs is None:
            continue
        textures = synthesise(synth, pairs, name)
        sets[name] = {**figures(textures), "noise_ratio": mean_noise_ratio(textures, pairs)}
    print(
        f"generator {GENERATOR_VERSION}, encoder {encoder}{' (random weights)' if random_weights else ''}, "
        f"sizes {config.sizes} steps {config.steps}, CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{'set':18s}{'n':>5s}{'median spike':>14s}{'(q25-q75)':>14s}{'frame':>8s}"
        f"{'4-px share':>12s}{'profile spike':>15s}{'noise ratio':>13s}"
    )
    for name, f in sets.items():
        spread = f"({f['spike_q25']:.1f}-{f['spike_q75']:.1f})"
        nr = f"{f['noise_ratio']:13.3f}" if f["noise_ratio"] is not None else f"{'-':>13s}"
        print(
            f"{name:18s}{f['textures']:5d}{f['median_spike']:14.1f}"
            f"{spread:>14s}{f['frame_ratio']:8.3f}"
            f"{100 * f['profile_share']:11.2f}%{f['profile_spike']:15.1f}{nr}"
        )
    fields = ("textures", "median_spike", "frame_ratio", "profile_share", "profile_spike")
    met = all(
        fingerprint.Fingerprint(**{k: f[k] for k in fields}).within_thresholds()
        for name, f in sets.items()
        if name != "real photo crops"
    )
    print(
        f"thresholds (median spike <= {fingerprint.MAX_MEDIAN_SPIKE:g}, frame <= "
        f"{fingerprint.MAX_FRAME_RATIO:g}, profile spike <= {fingerprint.MAX_PROFILE_SPIKE:g}): "
        f"{'MET' if met else 'NOT MET'}   ({time.perf_counter() - start:.0f} s)"
    )
    if json_path:
        atomic_write_json(
            json_path,
            {
                "generator_version": GENERATOR_VERSION,
                "encoder": encoder,
                "random_weights": bool(random_weights),
                "sizes": list(config.sizes),
                "steps": list(config.steps),
                "threads": torch.get_num_threads(),
                "sets": sets,
                "thresholds_met": met,
            },
        )


if __name__ == "__main__":
    main()
