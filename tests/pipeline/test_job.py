"""The Ray job end to end: real Ray, real tar files, real webdataset, real kill -9."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths, verify
from nsneg.datasets_manifest.format.naming import FORMAT_NAME, MANIFEST_NAME, record_path
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import TooManyBadSamples
from nsneg.pipeline import actors, job
from nsneg.pipeline.sources import folder_listing
from nsneg_testing import TINY, make_tree, texture_build_cmd


def run_job(out: Path, listing, **kwargs):
    config = job.JobConfig(out=out, synthesis=TINY, shard_size=3, max_skip_fraction=0.9, **kwargs)
    return job.run(config, listing, show_progress=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("shards")
    listing = folder_listing(tree, "train")
    return out, listing, run_job(out, listing)


def test_bad_inputs_are_converted_or_skipped_with_reasons(built):
    out, listing, summary = built
    manifest = load_manifest(out)
    reasons = {Path(s["path"]).name: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert set(reasons) == {"corrupt.jpg", "truncated.jpg", "tiny.png", "empty.jpg"}
    assert reasons["tiny.png"].startswith("too small") and reasons["corrupt.jpg"].startswith(
        "unreadable"
    )
    assert (
        manifest["splits"]["train"]["samples"]
        == len(listing.images) - 4
        == summary.textures_written
    )
    conversions = {s.meta["source_name"]: s.meta["conversions"] for s in iter_samples(out, "train")}
    assert conversions["cmyk.jpg"] == ["cmyk->rgb"] and conversions["rotated.jpg"] == [
        "exif-orientation-6"
    ]
    assert conversions["sixteen.png"] == ["I;16->rgb"] and conversions["palette.png"] == ["P->rgb"]


def test_manifest_and_contract_round_trip(built):
    out, listing, _ = built
    manifest = load_manifest(out)
    assert manifest["format"] == FORMAT_NAME and manifest["classes"] == listing.classes
    assert manifest["splits"]["train"]["complete"] is True
    assert manifest["generator"]["synthesis"]["steps"] == list(TINY.steps)
    assert verify(out) == []
    by_key = {im.key: im for im in listing.images}
    samples = list(iter_samples(out, "train"))
    for s in samples:
        assert "." not in s.key and s.texture.size == (224, 224) and s.texture.mode == "RGB"
        source = by_key[s.key]
        assert s.cls == source.cls and s.meta["wnid"] == source.wnid
        assert s.source_bytes == Path(source.path).read_bytes()  # original bytes, unchanged
        assert set(s.meta["crop_boxes"]) == {"center", "random"} and s.meta[
            "seed"
        ] == job.image_seed(0, s.key)
    dotted = [s for s in samples if s.meta["source_name"] == "with.dots.in.name.png"]
    assert len(dotted) == 1 and dotted[0].key.startswith("with_dots_in_name-")


def test_no_private_path_is_stored(built, tree):
    out, _, _ = built
    private = str(tree.resolve())
    assert private not in (out / MANIFEST_NAME).read_text()
    assert all(
        private.encode() not in p.read_bytes()
        for p in [*(out / "train").iterdir(), *(out / "records").iterdir()]
    )
    for s in iter_samples(out, "train"):
        assert s.meta["source_path"] == f"train/{s.meta['wnid']}/{s.meta['source_name']}"
    skipped = load_manifest(out)["splits"]["train"]["skipped"]
    assert skipped and all(s["path"].startswith("train/n00000003/") for s in skipped)


def test_shards_read_with_plain_tar_and_are_homogeneous(built):
    out, _, _ = built
    for shard in shard_paths(out, "train"):
        listed = subprocess.run(
            ["tar", "-tf", str(shard)], capture_output=True, text=True, check=True
        ).stdout.split()
        with tarfile.open(shard) as tar:
            assert listed == tar.getnames()
        keys = {}
        for name in listed:
            key, field = name.split(".", 1)
            keys.setdefault(key, set()).add(field)
        assert all(
            fields == {"texture.png", "source.img", "cls", "json"} for fields in keys.values()
        )


def test_shards_read_with_webdataset(built):
    import webdataset as wds

    out, _, _ = built
    urls = [str(p) for p in shard_paths(out, "train")]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == load_manifest(out)["splits"]["train"]["samples"]
    assert samples[0]["texture.png"].size == (224, 224) and isinstance(samples[0]["cls"], int)
    assert isinstance(samples[0]["json"], dict)


def test_shards_read_with_ray_data(built):
    import ray.data

    out, _, _ = built
    urls = [str(p) for p in shard_paths(out, "train")]
    rows = ray.data.read_webdataset(urls, decoder=None).take_all()
    assert len(rows) == load_manifest(out)["splits"]["train"]["samples"]
    assert {"texture.png", "json", "cls", "source.img"} <= set(rows[0])


def test_rerun_skips_finished_shards_and_reproduces_bytes(built, tmp_path):
    out, listing, _ = built
    before = load_manifest(out)
    again = run_job(out, listing)
    assert again.shards_written == 0 and load_manifest(out) == before
    fresh = run_job(
        tmp_path / "fresh", listing
    )  # same seed, other directory: byte-identical shards
    assert fresh.shards_written == fresh.shards
    assert load_manifest(tmp_path / "fresh")["splits"] == before["splits"]


def test_changed_settings_refuse_to_mix_into_existing_shards(built):
    out, listing, _ = built
    with pytest.raises(RuntimeError, match="other images or settings"):
        run_job(out, listing, seed=1)


def test_skip_threshold_fails_clearly_and_keeps_finished_shards(tmp_path, ray_session):
    tree = make_tree(tmp_path / "tree", n_per_class=1)
    config = job.JobConfig(
        out=tmp_path / "out", synthesis=TINY, shard_size=3, max_skip_fraction=0.05
    )
    with pytest.raises(TooManyBadSamples, match="max-skip-fraction"):
        job.run(config, folder_listing(tree, "train"), show_progress=False)
    manifest = load_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["complete"] is False and verify(tmp_path / "out") == []


def descendants_titled(title: str) -> list[int]:
    """Processes below this one (Ray's raylet starts the workers) whose command line starts with
    ``title``: Ray titles an actor's process after its class (``ray::TextureWorker``)."""

    def parent(pid: str) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not (entry / "cmdline").read_bytes().startswith(
                title.encode()
            ):
                continue
            pid = entry.name
            while int(pid) > 1 and int(pid) != os.getpid():
                pid = str(parent(pid))
            if int(pid) == os.getpid():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_killed_worker_is_replaced_and_its_shard_redone(tmp_path, ray_session):
    """An actor's process killed mid-shard: a new actor takes the shard; no partial file remains."""
    from nsneg.pipeline import dispatch, pool_plan

    ray = ray_session
    listing = folder_listing(make_tree(tmp_path / "tree", bad=False), "train")
    config = job.JobConfig(
        out=tmp_path / "out", synthesis=replace(TINY, steps=(150, 20, 5)), shard_size=6
    )
    spec = job.plan_shards(listing, config)[0]
    (tmp_path / "out" / "train").mkdir(parents=True)
    here = ray.get_runtime_context().get_node_id()
    slot = pool_plan.ActorSlot(here, "localhost", 1.0, 0.0)
    killed, records = [], []

    def kill_once_started(images, rates, actors, nodes):
        if killed or not actors:
            return
        time.sleep(2)  # mid-shard
        (pid,) = descendants_titled("ray::TextureWorker")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    use = dispatch.run_shards(
        config, [slot], [spec], records.append, kill_once_started, "test-progress", actor_wait_s=60
    )
    assert killed and use.lost == 1 and len(use.actors) == 2  # the first and its replacement
    (record,) = records
    assert record["samples"] == 6 and files.sha256_file(Path(spec.path)) == record["sha256"]
    assert record["node"]["id"] == here
    assert not list((tmp_path / "out" / "train").glob(".*tmp*"))


@pytest.mark.slow
def test_kill_9_loses_only_shards_in_flight_and_resume_completes(tmp_path):
    tree = make_tree(tmp_path / "tree", n_per_class=4, bad=False)
    out = tmp_path / "out"
    cmd = texture_build_cmd(tree, out, "--steps", "30,10,3")
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "train").glob("*.tar"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted((out / "train").glob("*.tar"))
    assert 2 <= len(finished) < 8, "the job must be killed mid-run"
    for tar in finished:  # every final name is a complete, checksummed shard
        assert files.sha256_file(tar) == json.loads(record_path(tar).read_text())["sha256"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"({8 - len(finished)} written now, {len(finished)} already done)" in done.stdout
    for ray_message in ("Started a local Ray instance", "Token authentication"):
        assert ray_message not in done.stdout + done.stderr  # Ray's chatter only with --verbose
    assert verify(out) == [] and load_manifest(out)["splits"]["train"]["samples"] == 8
    assert not list((out / "train").glob(".*tmp*"))


@pytest.mark.slow  # several shards synthesised and written
def test_host_stages_overlap_synthesis_and_threads_do_not_change_the_bytes(tmp_path, monkeypatch):
    """While a batch is synthesised the next one is decoded and cropped; any number of host
    threads gives the same shard, skips listed in input order."""
    import threading

    from nsneg.pipeline.synthesis import TextureSynthesizer

    listing = folder_listing(make_tree(tmp_path / "tree"), "train")  # bad inputs included: skips
    config = job.JobConfig(out=tmp_path / "out", synthesis=TINY, shard_size=len(listing.images))
    spec = job.plan_shards(listing, config)[0]
    batch_size = 3
    second_batch_key = spec.images[batch_size].key
    second_batch_decoded = threading.Event()
    prepare = job._prepare_image

    def watched_prepare(image, cfg):
        outcome = prepare(image, cfg)
        if image.key == second_batch_key:
            second_batch_decoded.set()
        return outcome

    monkeypatch.setattr(job, "_prepare_image", watched_prepare)
    synth = TextureSynthesizer(TINY)
    calls = []

    def synthesize(crops, seeds):
        if not calls:  # the first batch: the second must get decoded meanwhile, not after
            calls.append(second_batch_decoded.wait(timeout=60))
        return synth(crops, seeds)

    shards = {}
    for threads in (1, 4):
        path = tmp_path / f"out{threads}" / "train" / "shard.tar"
        record = job.write_shard(
            synthesize,
            job.ShardSpec(
                index=0, path=str(path), fingerprint=spec.fingerprint, images=spec.images
            ),
            config,
            batch_size=batch_size,
            host_threads=threads,
        )
        shards[threads] = (path.read_bytes(), record["skipped"])
    assert calls == [True]
    assert shards[1] == shards[4]
    order = [im.relpath for im in spec.images]
    skipped = [s["path"] for s in shards[1][1]]
    assert len(skipped) == 4 and skipped == sorted(skipped, key=order.index)


def test_progress_reports_textures_per_second_per_worker(ray_session):
    ray = ray_session
    progress = actors.progress_class().remote()
    ray.get(progress.add.remote(0, 0, 1))
    time.sleep(0.2)
    ray.get([progress.add.remote(4, 3, 1), progress.add.remote(2, 2, 0)])
    images, rates = ray.get(progress.take.remote())
    assert images == 6 and set(rates) == {1}  # worker 0 has one report: no interval yet
    assert 3 / 0.5 < rates[1] <= 3 / 0.2
    assert ray.get(progress.take.remote())[0] == 0
    assert (
        job._progress_postfix(1, 2, rates) == f"skipped=1, shards=2, textures/s w1={rates[1]:.3g}"
    )


@pytest.mark.slow
def test_ray_messages_reach_the_terminal_only_when_verbose():
    """Quiet by default (the resume run above and the wheel test read the CLI's output); with
    ``verbose`` Ray's start-up line is shown. Ray's own settings are untouched either way."""
    code = "from nsneg.pipeline import job; job._init_ray(1, verbose=True)"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "Started a local Ray instance" in done.stdout + done.stderr
