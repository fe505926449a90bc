"""Training throughput against the hardware's own ceiling, loader included, in one run.

Printed (and with ``--json PATH`` written) in one run, all on the same device and settings:
  anchor      torchvision ``--arch`` supervised: fwd+bwd+SGD img/s (``fb``) and forward-only img/s (``f``)
              at the same batch, size, precision and memory format;
  ceiling     per method and variant, a step's passes of the backbone per image: ``a`` fwd+bwd and
              ``n`` forwards without gradient (MoCo: the query; the key and one per non-semantic
              negative. BYOL: both views online; both views and the negatives through the target.
              SimCLR: both views; the negatives): ``1 / (a/fb + n/f)`` img/s;
  variants    per ``--methods`` method, the ``--kinds`` steps (default plain ``none`` and
              ``texture+patch``) on pre-loaded batches: img/s, % of their ceiling, and the cost of
              the non-semantic negatives against the same method's plain step;
  shuffle BN  the encoder's fwd+bwd with ``--bn-splits`` sub-batches vs plain BN (cost ratio);
  loader      ``nsneg-train``'s loader alone (``--workers`` processes): img/s;
  end to end  loader and ``texture+patch`` steps together, as ``nsneg-train`` runs them.

The data looks like ImageNet: ``--images`` distinct JPEGs (longest side 400-500 px, quality
85-95) cut from scikit-image's embedded photos by random crops, flips and re-encoding, with a
224 px PNG texture each, written as webdataset shards by the benchmark itself.

    python benchmarks/bench_train_step.py                      # CPU: resnet18, 64 px, batch 32
    python benchmarks/bench_train_step.py --methods moco --kinds none,texture,patch,texture+patch
    python benchmarks/bench_train_step.py --batch-size 64 --channels-last --steps 3   # split BN cost
    python benchmarks/bench_train_step.py --image-size 224 --loader-only               # loader rate
    python benchmarks/bench_train_step.py --device cuda --arch resnet50 --image-size 224 \\
        --batch-size 256 --workers 14 --images 2048 [--compile] --json bench.json
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.datasets_manifest.format.naming import shard_path
from nsneg.datasets_manifest.format.sample_reader import check_sample, iter_raw
from nsneg.datasets_manifest.format.shard_writer import ShardWriter, encode_sample
from nsneg.trainer.config import TrainConfig
from nsneg.trainer.methods import METHODS
from nsneg.trainer.methods.moco import build_backbone
from nsneg.trainer.train import Trainer

NS_NEGATIVES = {"none": 0, "texture": 1, "patch": 1, "texture+patch": 2}  # with --num-nonsem 1


def imagenet_like_shards(out: Path, images: int, shard_size: int = 64, seed: int = 0) -> list[str]:
    """``images`` distinct ImageNet-like JPEG sources (with a 224 px PNG texture each) in shards under ``out``."""
    import io

    import skimage

    from nsneg.pipeline.sources import EMBEDDED_PHOTOS

    rng = random.Random(seed)
    photos = [
        Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
        for name in EMBEDDED_PHOTOS
    ]
    paths = []
    for start in range(0, images, shard_size):
        path = shard_path(out, "train", start // shard_size)
        writer = ShardWriter(path)
        for i in range(start, min(images, start + shard_size)):
            photo = photos[i % len(photos)]
            side = rng.uniform(0.4, 1.0)
            w, h = (
                max(8, int(photo.width * side)),
                max(8, int(photo.height * side * rng.uniform(0.75, 1.33))),
            )
            w, h = min(w, photo.width), min(h, photo.height)
            x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            img = photo.crop((x, y, x + w, y + h))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            longest = rng.randint(400, 500)
            img = img.resize(
                (
                    max(1, round(img.width * longest / max(img.size))),
                    max(1, round(img.height * longest / max(img.size))),
                ),
                Image.Resampling.BICUBIC,
            )
            buffer = io.BytesIO()
            img.save(buffer, "JPEG", quality=rng.randint(85, 95))
            texture = np.asarray(img.resize((TEXTURE_SIZE, TEXTURE_SIZE)), dtype=np.uint8)
            writer.write(
                encode_sample(f"img{i:06d}", texture, i % len(photos), {}, buffer.getvalue())
            )
        writer.commit({})
        paths.append(str(path))
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def anchor(
    arch: str,
    batch: int,
    size: int,
    steps: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
):
    """Supervised torchvision ``arch``: (fwd+bwd+SGD img/s, forward-only img/s)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, arch)(num_classes=1000).to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)

    def train():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return batch / timed(train, steps, device), batch / timed(forward, steps, device)


def shuffle_bn_cost(
    arch: str,
    batch: int,
    size: int,
    splits: int,
    steps: int,
    device: torch.device,
    channels_last: bool,
) -> tuple[float, float]:
    """Seconds of the MoCo encoder's fwd+bwd with split BN (shuffle BN in one process) and with
    plain BN (interleaved, best of 3)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    nets = {n: build_backbone(arch, bn_splits=n).to(device, memory_format=fmt) for n in (splits, 1)}
    best = {n: float("inf") for n in nets}
    for _ in range(3):
        for n, net in nets.items():
            best[n] = min(best[n], timed(lambda net=net: net(x).sum().backward(), steps, device))
    return best[splits], best[1]


def loader_rate(trainer: Trainer, steps: int) -> float:
    """img/s of the trainer's loader, timed from its first batch (worker start-up excluded)."""
    start = None
    for i, _batch in enumerate(trainer.loader(trainer.config.seed, steps + 1)):
        if i == 0:
            start = time.perf_counter()
    return steps * trainer.per_rank / (time.perf_counter() - start)


def decode_rates(urls: list[str], image_size: int, samples: int = 64) -> tuple[float, float]:
    """One core, in this process: img/s of the loader's decode + 3 crops, and of the same with every
    source decoded at full size (draft mode off) -- the anchor for the loader."""
    import itertools

    from nsneg.trainer.crops import apply_box, crop_box
    from nsneg.trainer.data import views

    raws = list(itertools.islice(iter_raw(urls), samples))
    rng = random.Random(0)

    def full_decode():
        for raw in raws:
            sample = check_sample(raw)
            source = sample.source()
            box_q, box_k = crop_box(*source.size, rng), crop_box(*source.size, rng)
            apply_box(source, box_q, image_size), apply_box(source, box_k, image_size)
            apply_box(sample.texture, box_q, image_size)

    best = {"loader": float("inf"), "full": float("inf")}
    for _ in range(2):
        start = time.perf_counter()
        for _batch in views(iter(raws), image_size, 0):
            pass
        best["loader"] = min(best["loader"], time.perf_counter() - start)
        start = time.perf_counter()
        full_decode()
        best["full"] = min(best["full"], time.perf_counter() - start)
    return len(raws) / best["loader"], len(raws) / best["full"]


def end_to_end_rate(trainer: Trainer, steps: int) -> float:
    """img/s of loader + train_step as ``Trainer.fit`` runs them (timed from the first step's end)."""
    generator = torch.Generator().manual_seed(0)
    start = None
    for i, batch in enumerate(trainer.loader(trainer.config.seed + 1, steps + 1)):
        trainer.train_step(batch, generator)
        if i == 0:
            sync(trainer.device)
            start = time.perf_counter()
    sync(trainer.device)
    return steps * trainer.per_rank / (time.perf_counter() - start)


@click.command()
@click.option("--arch", default="resnet18", show_default=True)
@click.option("--image-size", type=int, default=64, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--steps", type=int, default=3, show_default=True, help="timed steps per measurement")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--images", type=int, default=256, show_default=True, help="distinct JPEGs to make")
@click.option("--bn-splits", type=int, default=8, show_default=True)
@click.option("--device", default=None, help="[default: cuda if available]")
@click.option("--channels-last/--no-channels-last", default=None, help="[default: on CUDA]")
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast [default: on CUDA]")
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the method's networks (the anchor stays eager)",
)
@click.option(
    "--methods", default=",".join(METHODS), show_default=True, help="comma list of methods"
)
@click.option(
    "--kinds", default="none,texture+patch", show_default=True, help="comma list of negatives"
)
@click.option("--loader-only", is_flag=True, help="measure the loader alone")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(
    arch,
    image_size,
    batch_size,
    steps,
    workers,
    images,
    bn_splits,
    device,
    channels_last,
    bf16,
    compile_,
    methods,
    kinds,
    loader_only,
    json_path,
) -> None:
    methods, kinds = methods.split(","), kinds.split(",")
    unknown = [m for m in methods if m not in METHODS] + [k for k in kinds if k not in NS_NEGATIVES]
    if unknown:
        raise click.UsageError(f"unknown methods or kinds: {', '.join(unknown)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    bf16 = device.type == "cuda" if bf16 is None else bf16
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    results: dict = {
        "device": name,
        "arch": arch,
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "workers": workers,
        "bf16": bf16,
        "channels_last": channels_last,
        "compile": compile_,
        "torch": torch.__version__,
    }
    print(
        f"device: {name}; {arch} at {image_size} px, batch {batch_size}, bf16 {bf16}, channels_last "
        f"{channels_last}, compile {compile_}, {steps} timed steps"
    )
    with tempfile.TemporaryDirectory() as tmp:
        urls = imagenet_like_shards(Path(tmp) / "shards", images)

        def trainer(kind: str, method: str = "moco") -> Trainer:
            config = TrainConfig(
                negatives=",".join(urls),
                out=tmp,
                method=method,
                arch=arch,
                image_size=image_size,
                batch_size=batch_size,
                method_settings=dict(k=batch_size * 16) if method == "moco" else None,
                epochs=1,
                steps_per_epoch=steps + 1,
                workers=workers,
                bn_splits=bn_splits,
                negatives_kind=kind,
                compile=compile_,
                channels_last=channels_last,
                bf16=bf16,
                shuffle_buffer=64,
            )
            return Trainer(config, device=str(device), show_progress=False)

        draft, full = decode_rates(urls, image_size)
        results["decode_one_core_img_s"] = {"loader": draft, "full_decode": full}
        print(
            f"decode + 3 crops, one core: {draft:8.1f} img/s (full-size decode: {full:.1f} img/s, "
            f"{draft / full:.2f}x)"
        )
        results["loader_img_s"] = loader_rate(trainer("none"), steps)
        print(
            f"loader ({workers} workers, {images} JPEGs, decode + 3 crops): {results['loader_img_s']:8.1f} img/s"
        )
        if not loader_only:
            fb, f = anchor(arch, batch_size, image_size, steps, device, bf16, channels_last)
            results["anchor"] = {"fwd_bwd_sgd_img_s": fb, "forward_img_s": f}
            print(f"anchor torchvision {arch}: fwd+bwd+SGD {fb:8.1f} img/s, forward {f:8.1f} img/s")
            split, plain = shuffle_bn_cost(
                arch, batch_size, image_size, bn_splits, steps, device, channels_last
            )
            results["shuffle_bn"] = {"split_s": split, "plain_s": plain, "cost": split / plain}
            print(
                f"shuffle BN ({bn_splits} sub-batches) fwd+bwd: {split * 1e3:.0f} ms vs plain BN "
                f"{plain * 1e3:.0f} ms = {split / plain:.2f}x"
            )
            batches = list(trainer("none").loader(0, steps + 1))
            results["variants"] = {}
            for method in methods:
                results["variants"][method] = {}
                for kind in kinds:
                    t, generator = trainer(kind, method), torch.Generator().manual_seed(0)
                    it = iter(batches)
                    rate = batch_size / timed(
                        lambda t=t, it=it, g=generator: t.train_step(next(it), g), steps, device
                    )
                    # fwd+bwd passes, forwards without gradient besides one per NS negative
                    backward, forward = METHODS[method].backbone_passes
                    ceiling = 1 / (backward / fb + (forward + NS_NEGATIVES[kind]) / f)
                    row = {"img_s": rate, "ceiling_img_s": ceiling, "of_ceiling": rate / ceiling}
                    results["variants"][method][kind] = row
                    plain = results["variants"][method].get("none")
                    cost = f"   cost vs plain {plain['img_s'] / rate:.2f}x" if plain else ""
                    print(
                        f"step {method:6s} {kind:14s} {rate:8.1f} img/s   ceiling {ceiling:8.1f}   "
                        f"{100 * rate / ceiling:5.1f} %{cost}"
                    )
            results["end_to_end_img_s"] = end_to_end_rate(
                trainer("texture+patch", methods[0]), steps
            )
            print(
                f"end to end (loader + {methods[0]} texture+patch steps): "
                f"{results['end_to_end_img_s']:8.1f} img/s"
            )
    if json_path:
        atomic_write_json(json_path, results)


if __name__ == "__main__":
    main()
