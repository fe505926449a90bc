"""nsneg-eval robustness end to end: real photos in wnid folders, a checkpoint in the paper's
released format and one of ours, heads trained by ``nsneg-eval linear``, out-of-domain sets
sharing some, one or no class with the head, generated and on-disk ImageNet-C. Every reported
number is recomputed here from extract_features and the head."""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD
from nsneg.trainer import checkpoint
from nsneg.trainer.eval import features, probes, stats
from nsneg.trainer.eval.corruptions import corrupt
from nsneg_testing import PHOTOS, encode, keep_sample, photo

CLASSES = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player
TINTS = [(1.0, 0.7, 0.7), (0.7, 1.0, 0.7), (0.7, 0.7, 1.0)]
C_ARGS = ["--corruptions", "gaussian_noise,defocus_blur", "--severities", "1,4"]


def class_photo(c: int, i: int, size=(56, 48)) -> Image.Image:
    """Photo ``i`` of class ``c``: one of the bundled photos, tinted in the class colour."""
    img = photo(PHOTOS[(2 * c + i) % len(PHOTOS)], size)
    if i >= 2:
        img = ImageOps.mirror(img)
    return Image.fromarray((np.asarray(img) * np.array(TINTS[c])).astype(np.uint8))


def write(root: Path, wnid: str, name: str, img: Image.Image) -> None:
    (root / wnid).mkdir(parents=True, exist_ok=True)
    (root / wnid / name).write_bytes(
        encode(img, "JPEG", quality=92) if name.endswith(".JPEG") else encode(img)
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_checkpoint, invoke):
    root = tmp_path_factory.mktemp("robustness")
    for c, wnid in enumerate(CLASSES):  # 4 val images per class
        for i in range(4):
            write(root / "val", wnid, f"ILSVRC2012_val_{c}{i}.JPEG", class_photo(c, i))
    for c, n in ((0, 3), (1, 2)):  # sketches of two classes, and of a class the head does not know
        for i in range(n):
            sketch = class_photo(c, i).convert("L").filter(ImageFilter.FIND_EDGES)
            write(
                root / "sketch",
                CLASSES[c],
                f"sketch_{i}.png",
                ImageOps.invert(sketch).convert("RGB"),
            )
    write(root / "sketch", "n09999999", "other.png", class_photo(0, 0))
    for i in range(2):
        write(
            root / "rendition", CLASSES[2], f"art_{i}.png", ImageOps.posterize(class_photo(2, i), 2)
        )
    write(root / "stylized", "n09999999", "style.png", class_photo(1, 1))

    released = make_checkpoint(root / "moco_v2_released.pth.tar", released=True)
    ours = make_checkpoint(root / "runs" / "ours" / "checkpoint.pt")
    heads = {}
    for key, ckpt, extra in (("released", released, ["--image-size", 64]), ("ours", ours, [])):
        heads[key] = root / f"head_{key}.pt"
        result = invoke(
            "linear",
            "--checkpoint",
            ckpt,
            "--train",
            root / "val",
            "--val",
            root / "val",
            "--epochs",
            10,
            "--workers",
            0,
            "--out",
            heads[key],
            *extra,
        )
        assert result.exit_code == 0, result.output
    return {"root": root, "released": released, "ours": ours, "heads": heads}


def robustness(invoke, world, key: str, out: Path, *args):
    return invoke(
        "robustness",
        "--checkpoint",
        world[key],
        "--linear-head",
        world["heads"][key],
        "--imagenet-val",
        world["root"] / "val",
        "--workers",
        0,
        "--out-dir",
        out,
        *args,
    )


# --------------------------------------------------------------------------- the numbers, recomputed


def listing(root: Path) -> list[tuple[Path, int]]:
    """(file, head class index) of every image of ``root/<wnid>/`` whose wnid the head knows."""
    return [
        (path, c)
        for c, wnid in enumerate(CLASSES)
        if (root / wnid).is_dir()
        for path in sorted((root / wnid).iterdir())
    ]


def direct_top1(world, key: str, images: torch.Tensor, labels: list[int]) -> float:
    backbone, _ = checkpoint.load_backbone(world[key])
    head, _ = probes.load_linear_head(world["heads"][key])
    x, y = features.extract_features(backbone, [(images, torch.tensor(labels))], "cpu")
    return probes.top1(head, x, y)


def folder_top1(world, key: str, root: Path, size: int) -> tuple[float, int, int]:
    """Top-1, classes and images of a wnid folder through the plain evaluation view."""
    samples = listing(root)
    view = features.eval_transform(size)
    images = torch.stack([view(Image.open(p).convert("RGB")) for p, _ in samples])
    labels = [c for _, c in samples]
    return direct_top1(world, key, images, labels), len(set(labels)), len(labels)


def generated_c_top1(world, key: str, name: str, severity: int, size: int) -> float:
    """ImageNet-C's recipe by hand: Resize(256) + CenterCrop(224), corrupt with the image's seed
    (CRC-32 of <wnid>/<file>), then resize, crop and normalise as a released file would be."""
    val = world["root"] / "val"
    samples = listing(val)
    crop = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    )
    crops = torch.stack([crop(Image.open(p).convert("RGB")) for p, _ in samples])
    seeds = [zlib.crc32(p.relative_to(val).as_posix().encode()) for p, _ in samples]
    view = transforms.Compose(
        [
            transforms.Resize(round(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return direct_top1(
        world, key, view(corrupt(crops, name, severity, seeds)), [c for _, c in samples]
    )


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def released_run(invoke, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_released")
    root = world["root"]
    result = robustness(
        invoke,
        world,
        "released",
        out,
        "--sketch",
        root / "sketch",
        "--rendition",
        root / "rendition",
        "--stylized",
        root / "stylized",
        *C_ARGS,
    )
    return result, out


@pytest.mark.slow  # a whole robustness report
def test_released_checkpoint_report_matches_a_direct_computation(world, released_run):
    result, out = released_run
    assert result.exit_code == 0, result.output
    report = json.loads((out / "robustness.json").read_text())
    root = world["root"]
    assert (report["name"], report["arch"], report["image_size"], report["head_classes"]) == (
        "moco_v2_released",
        "resnet18",
        64,
        3,
    )

    sets = report["sets"]
    for key, classes, images in (("val", 3, 12), ("sketch", 2, 5), ("rendition", 1, 2)):
        top1, n_classes, n_images = folder_top1(world, "released", root / key, 64)
        assert (
            (sets[key]["classes"], sets[key]["images"])
            == (classes, images)
            == (n_classes, n_images)
        )
        assert sets[key]["top1"] == pytest.approx(top1, abs=1e-12), key
        low, high = stats.wilson(round(top1 * images), images)
        assert sets[key]["interval"] == pytest.approx([low, high])
        assert low <= sets[key]["top1"] <= high
    assert sets["stylized"] == {
        "path": str(root / "stylized"),
        "top1": None,
        "classes": 0,
        "images": 0,
        "interval": None,
    }
    assert report["skipped_sets"] == ["stylized"] and report["chance"] == pytest.approx(1 / 3)
    assert report["evaluated"] == str(world["released"].resolve())
    assert "Stylized-ImageNet" in result.output and "shares no class with the head" in result.output

    c = report["imagenet_c"]
    assert c["source"] == "generated" and c["severities"] == [1, 4]
    assert sorted(c["corruptions"]) == ["defocus_blur", "gaussian_noise"]
    for name, entry in c["corruptions"].items():
        for s in (1, 4):
            variant = entry["severities"][str(s)]
            assert (variant["classes"], variant["images"]) == (3, 12)
            assert variant["top1"] == pytest.approx(
                generated_c_top1(world, "released", name, s, 64), abs=1e-12
            )
        assert entry["mean"] == pytest.approx(
            np.mean([entry["severities"][s]["top1"] for s in ("1", "4")])
        )
    assert c["mean"] == pytest.approx(np.mean([e["mean"] for e in c["corruptions"].values()]))
    # The mean's interval takes the 12 distinct images as n.
    assert c["images"] == 12 and c["interval"] == pytest.approx(
        list(stats.wilson(round(c["mean"] * 12), 12))
    )


@pytest.mark.slow  # a whole robustness report
def test_report_files_markdown_and_plot(released_run):
    result, out = released_run
    text = (out / "robustness.md").read_text()
    report = json.loads((out / "robustness.json").read_text())
    assert text in result.output  # the terminal shows the same table
    assert "| Set | moco_v2_released |" in text and "[Wilson 95% interval]" in text
    val = report["sets"]["val"]
    assert (
        f"| ImageNet val | {100 * val['top1']:.2f} "
        f"[{100 * val['interval'][0]:.1f}, {100 * val['interval'][1]:.1f}] |" in text
    )
    assert "| Stylized-ImageNet | n/a |" in text
    assert "| chance (1 / head classes) | 33.33 |" in text
    assert "Skipped (no class shared with the head): Stylized-ImageNet." in text
    assert f"| ImageNet-C mean | {100 * report['imagenet_c']['mean']:.2f} [" in text
    assert "| Corruption | 1 | 4 | Mean |" in text and "images per variant: 12" in text
    assert f"| ImageNet-Sketch ({report['sets']['sketch']['path']}) | 2 | 5 |" in text
    with Image.open(out / "robustness.png") as png:
        assert png.format == "PNG" and png.width > 300 and png.height > 300


@pytest.mark.slow  # two whole robustness reports
def test_compare_puts_checkpoints_side_by_side(
    invoke, world, released_run, tmp_path, tmp_path_factory
):
    _, released_out = released_run
    result = robustness(
        invoke,
        world,
        "ours",
        tmp_path,
        "--sketch",
        world["root"] / "sketch",
        *C_ARGS,
        "--compare",
        released_out / "robustness.json",
    )
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "robustness.json").read_text())
    released = json.loads((released_out / "robustness.json").read_text())
    assert (
        ours["name"] == "ours" and ours["image_size"] == 32
    )  # runs/ours/checkpoint.pt, trained at 32 px
    assert ours["sets"]["val"]["top1"] == pytest.approx(
        folder_top1(world, "ours", world["root"] / "val", 32)[0]
    )
    text = (tmp_path / "robustness.md").read_text()
    assert "| Set | ours | moco_v2_released |" in text
    val = (
        f"| ImageNet val | {100 * ours['sets']['val']['top1']:.2f} [{100 * ours['sets']['val']['interval'][0]:.1f}, "
        f"{100 * ours['sets']['val']['interval'][1]:.1f}] | {100 * released['sets']['val']['top1']:.2f} ["
    )
    assert val in text
    # What differs is said: the image size and the sets (Sketch evaluated on the same 5 images).
    assert "* image size (px): ours 32, moco_v2_released 64" in text
    assert "ImageNet-R: ours not evaluated, moco_v2_released 2 images of 1 classes" in text
    assert "ImageNet-Sketch:" not in text and "ImageNet-C corruptions" not in text
    assert "measured on the same number of images" in text
    assert (
        f"| ImageNet-R | – | {100 * released['sets']['rendition']['top1']:.2f} [" in text
    )  # only one evaluated it
    assert (tmp_path / "robustness.png").stat().st_size > 10_000
    for name in ("robustness.md", "robustness.png"):
        keep_sample(tmp_path / name, tmp_path_factory.getbasetemp())
    # Comparing a report with itself labels the copies apart.
    again = robustness(
        invoke,
        world,
        "ours",
        tmp_path / "again",
        "--corruptions",
        "none",
        "--compare",
        tmp_path / "robustness.json",
    )
    assert again.exit_code == 0 and "| Set | ours | ours (2) |" in again.output
    assert "ImageNet-C mean *" not in again.output and "| ImageNet-C mean | – |" in again.output
    assert (
        f"* the same checkpoint ({world['ours'].resolve()}) is in several columns: ours, ours (2)"
        in again.output
    )
    assert "the linear head of" not in again.output  # each head was trained on its checkpoint
    assert (
        "* ImageNet-C corruptions: ours none, ours (2) gaussian_noise, defocus_blur" in again.output
    )
    assert "* ImageNet-C severities: ours none, ours (2) 1,4" in again.output
    assert "* image size" not in again.output and "* head classes" not in again.output


@pytest.mark.slow  # a whole robustness report
def test_imagenet_c_tree_on_disk(invoke, world, tmp_path):
    """A released-style tree DIR/<corruption>/<severity>/<wnid>/*: evaluated as it is, any classes it has."""
    tree = tmp_path / "imagenet-c"
    for c in (0, 2):
        for i in range(2):
            img = Image.fromarray(
                (np.asarray(class_photo(c, i, (224, 224))) * 0.6).astype(np.uint8)
            )
            write(tree / "contrast" / "2", CLASSES[c], f"ILSVRC2012_val_{c}{i}.JPEG", img)

    def on_tree(*args):
        return robustness(invoke, world, "released", tmp_path / "out", "--imagenet-c", tree, *args)

    result = on_tree("--corruptions", "contrast", "--severities", "2")
    assert result.exit_code == 0, result.output
    variant = json.loads((tmp_path / "out" / "robustness.json").read_text())["imagenet_c"][
        "corruptions"
    ]["contrast"]
    top1, classes, images = folder_top1(world, "released", tree / "contrast" / "2", 64)
    assert variant["severities"]["2"]["top1"] == pytest.approx(top1, abs=1e-12)
    assert (
        (variant["severities"]["2"]["classes"], variant["severities"]["2"]["images"])
        == (classes, images)
        == (2, 4)
    )

    result = on_tree("--corruptions", "contrast,fog")
    assert (
        result.exit_code == 1
        and "lacks 9 of the requested corruption/severity folders" in result.output
    )
    assert "contrast/1, contrast/3" in result.output and "--corruptions" in result.output


def test_max_per_class_limits_every_set(invoke, world, tmp_path):
    result = robustness(
        invoke,
        world,
        "ours",
        tmp_path,
        "--max-per-class",
        2,
        "--sketch",
        world["root"] / "sketch",
        "--corruptions",
        "contrast",
        "--severities",
        "5",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["max_per_class"] == 2
    assert (report["sets"]["val"]["images"], report["sets"]["sketch"]["images"]) == (6, 4)
    assert report["imagenet_c"]["corruptions"]["contrast"]["severities"]["5"]["images"] == 6


# --------------------------------------------------------------------------- errors


@pytest.mark.slow  # several robustness commands
def test_checkpoint_and_head_errors(invoke, world, tmp_path):
    root = world["root"]
    foreign = tmp_path / "foreign.pt"
    torch.save({"foo": 1}, foreign)
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    wrong_arch = tmp_path / "resnet50_head.pt"
    probes.save_linear_head(
        wrong_arch, torch.nn.Linear(512, 3), CLASSES, "resnet50", 64, "elsewhere.pt"
    )
    cases = [
        (
            tmp_path / "missing.pt",
            world["heads"]["released"],
            f"checkpoint {tmp_path / 'missing.pt'} not found",
        ),
        (foreign, world["heads"]["released"], "expected an nsneg checkpoint"),
        (tmp_path / "garbage.pt", world["heads"]["released"], "is not a readable torch checkpoint"),
        (
            world["released"],
            tmp_path / "missing.pt",
            f"linear head {tmp_path / 'missing.pt'} not found",
        ),
        (world["released"], world["ours"], "is not an nsneg linear head"),
        (world["released"], wrong_arch, "was trained on resnet50 features, but checkpoint"),
        (world["ours"], world["heads"]["released"], "was trained at 64 px, but checkpoint"),
    ]
    for ckpt, head, message in cases:
        result = invoke(
            "robustness",
            "--checkpoint",
            ckpt,
            "--linear-head",
            head,
            "--imagenet-val",
            root / "val",
            "--out-dir",
            tmp_path / "out",
        )
        assert result.exit_code == 1 and "Error: " in result.output and message in result.output, (
            result.output
        )
    assert not (tmp_path / "out").exists()


def test_data_and_option_errors(invoke, world, tmp_path):
    root = world["root"]
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text(json.dumps({"metric": "linear", "top1": 0.5}))
    cases = [
        (["--imagenet-val", root / "stylized"], 1, "holds none of the head's 3 classes (n01440764"),
        (["--corruptions", "gaussian_noise,rain"], 2, "unknown corruption(s) rain"),
        (["--severities", "0,2"], 2, "severities from 1 to 5, got '0,2'"),
        (["--severities", "x"], 2, "severities from 1 to 5"),
        (["--compare", world["heads"]["ours"]], 2, "is not readable JSON"),
        (["--compare", not_a_report], 2, "is not a nsneg-robustness report"),
    ]
    for args, code, message in cases:  # the last --corruptions / --imagenet-val given wins
        result = invoke(
            "robustness",
            "--checkpoint",
            world["ours"],
            "--linear-head",
            world["heads"]["ours"],
            "--imagenet-val",
            root / "val",
            "--corruptions",
            "none",
            "--workers",
            0,
            "--out-dir",
            tmp_path / "out",
            *args,
        )
        assert result.exit_code == code and message in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_default_folder_is_the_runs_and_never_another_checkpoints(
    invoke, world, tmp_path, monkeypatch
):
    """robustness/<run> by default; a second checkpoint of the same run name is refused before any
    evaluation, and the first report stays as it was."""
    import shutil

    monkeypatch.chdir(tmp_path)
    args = ["--linear-head", world["heads"]["ours"], "--imagenet-val", world["root"] / "val"]
    args += ["--corruptions", "none", "--workers", 0]
    first = invoke("robustness", "--checkpoint", world["ours"], *args)
    assert first.exit_code == 0, first.output
    own = tmp_path / "robustness" / "ours" / "robustness.json"
    before = own.read_bytes()
    assert json.loads(before)["evaluated"] == str(world["ours"].resolve())
    twin = tmp_path / "elsewhere" / "ours" / "checkpoint.pt"
    twin.parent.mkdir(parents=True)
    shutil.copyfile(world["ours"], twin)
    refused = invoke("robustness", "--checkpoint", twin, *args)
    assert (
        refused.exit_code == 1 and f"is the report of {world['ours'].resolve()}" in refused.output
    )
    assert own.read_bytes() == before
    named = invoke("robustness", "--checkpoint", twin, "--name", "twin", *args)
    assert named.exit_code == 0 and (tmp_path / "robustness" / "twin" / "robustness.json").is_file()
