"""`nsneg-textures pair`: a real texture-only set (made by the real job) joined with a real ImageFolder tree."""

import shutil
from pathlib import Path

import pytest

from nsneg.datasets_manifest.format.manifest import load_manifest, verify
from nsneg.datasets_manifest.format.naming import (
    CLASS_FIELD,
    META_FIELD,
    SOURCE_FIELD,
    TEXTURE_FIELD,
    shard_name,
    shard_path,
)
from nsneg.datasets_manifest.format.sample_reader import iter_raw, iter_samples, tar_members
from nsneg.pipeline import job
from nsneg.pipeline import pair as pairing
from nsneg.pipeline.cli import main
from nsneg.pipeline.sources import folder_listing
from nsneg_testing import TINY, make_tree

TEXTURE_MEMBERS = (TEXTURE_FIELD, CLASS_FIELD, META_FIELD)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    """(ImageNet tree, texture-only set): 6 photos in 3 shards, plus one corrupt file the texture job skipped."""
    base = tmp_path_factory.mktemp("pair")
    tree = make_tree(base / "imagenet", n_per_class=3, bad=False)
    (tree / "train" / "n00000002" / "broken.jpg").write_bytes(b"not an image at all")
    textures = base / "textures"
    config = job.JobConfig(
        out=textures, synthesis=TINY, shard_size=3, include_source=False, max_skip_fraction=0.5
    )
    job.run(config, folder_listing(tree, "train"), show_progress=False)
    assert load_manifest(textures)["has_source"] is False
    return tree, textures


@pytest.fixture
def pair_cli(cli):
    """``pair_cli(textures, imagenet, out)``: ``nsneg-textures pair`` in-process, quiet."""
    return lambda textures, imagenet, out: cli(
        main, "pair", "--textures", textures, "--imagenet", imagenet, "--out", out, "--quiet"
    )


def test_pair_end_to_end(pair_cli, built, tmp_path):
    tree, textures = built
    out = tmp_path / "paired"
    result = pair_cli(textures, tree, out)
    assert result.exit_code == 0, result.output
    assert "(3 written now, 0 already done)" in result.output
    assert (
        "missing    0" in result.output
        and "unpaired   0" in result.output
        and "skipped    1" in result.output
    )
    assert verify(out) == []
    before, after = load_manifest(textures), load_manifest(out)
    assert after["has_source"] is True and SOURCE_FIELD in after["fields"]
    assert after["generator"] == before["generator"] and after["classes"] == before["classes"]
    names = [s["name"] for s in before["splits"]["train"]["shards"]]
    assert [s["name"] for s in after["splits"]["train"]["shards"]] == names
    assert after["splits"]["train"]["samples"] == 6 and after["splits"]["train"]["complete"] is True
    # skipped by the texture job: still skipped, and not reported as an ImageNet file without texture
    assert after["splits"]["train"]["skipped"] == before["splits"]["train"]["skipped"]
    assert after["unpaired_sources"]["train"] == {"count": 0, "examples": []}

    samples = list(iter_samples(out, "train"))
    assert len(samples) == 6
    for s in samples:
        assert (
            s.source_bytes == (tree / "train" / s.meta["wnid"] / s.meta["source_name"]).read_bytes()
        )
    for name in names:  # texture, class and json members copied byte for byte
        original = {raw["__key__"]: raw for raw in iter_raw([textures / "train" / name])}
        for raw in iter_raw([out / "train" / name]):
            assert all(raw[f] == original[raw["__key__"]][f] for f in TEXTURE_MEMBERS)
        fields = sorted(m.split(".", 1)[1] for m in tar_members(out / "train" / name))
        assert fields == sorted([*TEXTURE_MEMBERS, SOURCE_FIELD] * len(original))  # homogeneous


def test_missing_imagenet_file_is_skipped_and_file_without_texture_is_unpaired(
    pair_cli, built, tmp_path
):
    tree, textures = built
    imagenet = Path(shutil.copytree(tree, tmp_path / "imagenet"))
    gone = imagenet / "train" / "n00000001" / "n00000001_1.JPEG"
    gone.unlink()
    extra = imagenet / "train" / "n00000002" / "extra.JPEG"
    shutil.copy(imagenet / "train" / "n00000002" / "n00000002_0.JPEG", extra)
    out = tmp_path / "paired"
    result = pair_cli(textures, imagenet, out)
    assert result.exit_code == 0, result.output
    assert "missing    1" in result.output and f"{gone}: missing in ImageNet" in result.output
    assert "unpaired   1" in result.output and str(extra.resolve()) in result.output
    manifest = load_manifest(out)
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert (
        set(reasons) == {"broken.jpg", "n00000001_1.JPEG"}
        and reasons["n00000001_1.JPEG"] == pairing.MISSING
    )
    assert manifest["unpaired_sources"]["train"] == {"count": 1, "examples": [str(extra.resolve())]}
    assert verify(out) == [] and manifest["splits"]["train"]["samples"] == 5
    assert "n00000001_1" not in {s.key for s in iter_samples(out, "train")}


def test_rerun_writes_nothing_and_another_imagenet_root_is_refused(pair_cli, built, tmp_path):
    tree, textures = built
    out = tmp_path / "paired"
    first = pairing.run(textures, tree, out, show_progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    manifest = load_manifest(out)
    again = pairing.run(textures, tree, out, show_progress=False)
    assert (first.shards_written, again.shards_written, again.paired) == (3, 0, 6)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()} == mtimes
    assert load_manifest(out) == manifest
    result = pair_cli(textures, Path(shutil.copytree(tree, tmp_path / "other")), out)
    assert result.exit_code == 1 and "other images or settings" in result.output


def test_interrupted_run_leaves_no_partial_shard_and_resumes(
    pair_cli, built, tmp_path, monkeypatch
):
    tree, textures = built
    out = tmp_path / "paired"
    real_iter_raw, shards_opened = iter_raw, []

    def dies_in_second_shard(urls):
        shards_opened.append(urls)
        for i, raw in enumerate(real_iter_raw(urls)):
            if len(shards_opened) == 2 and i == 1:
                raise KeyboardInterrupt  # as if stopped mid-shard
            yield raw

    monkeypatch.setattr(pairing, "iter_raw", dies_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        pairing.run(textures, tree, out, show_progress=False)
    monkeypatch.undo()
    assert [p.name for p in (out / "train").glob("*.tar")] == [shard_name("train", 0)]
    assert not list((out / "train").glob(".*tmp*"))
    manifest = load_manifest(out)
    assert (
        manifest["splits"]["train"]["complete"] is False
        and len(manifest["splits"]["train"]["shards"]) == 1
    )
    assert verify(out) == []
    stale = out / "train" / f".{shard_name('train', 1)}.tmp-99999"  # what kill -9 leaves behind
    stale.write_bytes(b"partial")
    result = pair_cli(textures, tree, out)
    assert result.exit_code == 0 and "(2 written now, 1 already done)" in result.output, (
        result.output
    )
    assert not stale.exists() and verify(out) == []
    assert load_manifest(out)["splits"]["train"]["samples"] == 6


def test_refuses_inputs_that_cannot_be_paired(pair_cli, built, tmp_path):
    tree, textures = built

    def refused(textures_dir: Path, imagenet: Path, message: str) -> None:
        out = tmp_path / "out"
        result = pair_cli(textures_dir, imagenet, out)
        assert result.exit_code == 1 and message in result.output, result.output
        assert not out.exists()

    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", tree, "manifest.json not found")
    (tmp_path / "no-split").mkdir()
    refused(textures, tmp_path / "no-split", "no-split/train is not a directory")
    with_source = tmp_path / "with-source"
    pairing.run(textures, tree, with_source, show_progress=False)
    refused(with_source, tree, "already carries source pixels")
    tampered = Path(shutil.copytree(textures, tmp_path / "tampered"))
    shard = shard_path(tampered, "train", 1)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    refused(tampered, tree, "sha256 mismatch")


def test_pair_needs_no_ray():
    import subprocess
    import sys

    code = "import sys, nsneg.pipeline.pair; assert 'ray' not in sys.modules and 'nsneg.pipeline.job' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
