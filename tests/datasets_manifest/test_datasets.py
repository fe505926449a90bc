"""Published shard sets over a real HTTP server on 127.0.0.1: publish -> list -> fetch (cut,
5xx, corrupted) -> verify -> preview -> stats -> stream into the trainer's loader."""

import copy
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from nsneg.datasets_manifest import registry
from nsneg.datasets_manifest.cli import main as data_cli
from nsneg.datasets_manifest.fetch import fetch
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import (
    ManifestError,
    load_manifest,
    shard_paths,
    verify,
)
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.format.sample_reader import iter_raw


class ShardServer(ThreadingHTTPServer):
    """Serves files under ``root`` with HTTP Range support, and misbehaves on request:
    ``faults[path]`` is a list of 'cut' (half the body, then hang up), '503', 'corrupt' or
    'norange' (the whole file with status 200, whatever Range asked)."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), ShardHandler)
        self.root = root
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ShardHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server: ShardServer = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        fault = server.faults.get(self.path, []).pop(0) if server.faults.get(self.path) else None
        path = server.root / self.path.lstrip("/")
        if fault == "503":
            return self.send_error(503)
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = (
            int(self.headers["Range"].split("=")[1].split("-")[0])
            if self.headers.get("Range")
            else 0
        )
        start = 0 if fault == "norange" else start
        if start >= len(data) and start:
            return self.send_error(416)
        body = data[start:]
        if fault == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def served(tmp_path_factory, texture_shards):
    root = tmp_path_factory.mktemp("published")
    shards = Path(shutil.copytree(texture_shards[0], root / "www" / "set"))
    server = ShardServer(root / "www")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    manifests = root / "manifests"
    registry.publish(shards, f"{server.base}/set", "demo", "1", manifests)
    yield server, shards, manifests
    server.shutdown()


@pytest.fixture
def data(cli):
    """``data(*args)``: ``nsneg-data`` in-process."""
    return lambda *args: cli(data_cli, *args)


def names(shards: Path) -> list[str]:
    return [s["name"] for s in load_manifest(shards)["splits"]["train"]["shards"]]


def test_publish_and_list(data, served):
    server, shards, manifests = served
    published = json.loads((manifests / "demo-1.json").read_text())
    assert (
        published["splits"]["train"]["shards"][0]["url"]
        == f"{server.base}/set/train/{names(shards)[0]}"
    )
    result = data("list", "--manifest-dir", str(manifests))
    assert result.exit_code == 0 and "demo@1" in result.output and " 6 " in result.output


def test_fetch_survives_cut_connections_server_errors_and_corruption(data, served, tmp_path):
    server, shards, manifests = served
    first, second, third = (f"/set/train/{n}" for n in names(shards)[:3])
    server.faults = {first: ["cut"], second: ["503", "503"], third: ["corrupt"]}
    server.requests.clear()
    report = fetch(
        registry.find("demo@1", [manifests]), tmp_path, jobs=2, show_progress=False, backoff=0.01
    )
    assert not report.failed and len(report.downloaded) == 3 and report.retries == 4
    resumed = [rng for path, rng in server.requests if path == first]
    assert (
        resumed[0] is None and resumed[1].startswith("bytes=") and resumed[1] != "bytes=0-"
    )  # HTTP Range resume
    assert [rng for path, rng in server.requests if path == third] == [
        None,
        None,
    ]  # corrupt: deleted, fetched anew
    for n in names(shards):
        assert (tmp_path / "train" / n).read_bytes() == (shards / "train" / n).read_bytes()
    assert verify(tmp_path) == [] and not list(tmp_path.glob("train/.*part"))
    result = data("verify", str(tmp_path))
    assert result.exit_code == 0 and "0 of 3 shards bad" in result.output

    server.requests.clear()  # a rerun downloads nothing that is already verified
    again = fetch(registry.find("demo", [manifests]), tmp_path, show_progress=False)
    assert again.downloaded == [] and len(again.already_verified) == 3 and server.requests == []


def test_a_shard_that_keeps_failing_is_reported_and_never_kept(served, tmp_path):
    server, shards, manifests = served
    bad = f"/set/train/{names(shards)[0]}"
    server.faults = {bad: ["corrupt"] * 3}
    report = fetch(
        registry.find("demo@1", [manifests]), tmp_path, show_progress=False, retries=2, backoff=0.01
    )
    assert (
        list(report.failed) == [f"train/{names(shards)[0]}"]
        and "sha256" in report.failed[f"train/{names(shards)[0]}"]
    )
    assert not (tmp_path / "train" / names(shards)[0]).exists()
    local = load_manifest(tmp_path)
    assert (
        local["splits"]["train"]["complete"] is False
        and len(local["splits"]["train"]["shards"]) == 2
    )
    assert verify(tmp_path) == []


def test_cli_fetch_verify_preview_stats(data, served, tmp_path):
    server, shards, manifests = served
    server.faults = {}
    result = data(
        "fetch",
        "demo@1",
        "--to",
        str(tmp_path / "got"),
        "--manifest-dir",
        str(manifests),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "3 downloaded, 0 already verified" in result.output
    sheet = tmp_path / "sheet.png"
    result = data(
        "preview", "demo@1", "-o", str(sheet), "--n", "2", "--manifest-dir", str(manifests)
    )
    assert result.exit_code == 0, result.output
    assert Image.open(sheet).size[1] > 2 * 160
    result = data("preview", str(tmp_path / "got"), "-o", str(sheet), "--classes", "n00000002")
    assert result.exit_code == 0 and Image.open(sheet).size[1] > 3 * 160
    plot = tmp_path / "losses.png"
    result = data("stats", tmp_path / "got", "--json", tmp_path / "stats.json", "--plot", plot)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["splits"]["train"]["per_class"] == {"n00000001": 3, "n00000002": 3}
    assert len(stats["splits"]["train"]["losses"]) == 6 and plot.exists()
    assert not (tmp_path / "got" / "losses.png").exists()  # never into the set unasked
    # a tampered local shard is reported by verify
    tar = tmp_path / "got" / "train" / names(shards)[1]
    tar.write_bytes(tar.read_bytes()[:-10])
    result = data("verify", str(tmp_path / "got"))
    assert result.exit_code == 1 and f"BAD train/{names(shards)[1]}" in result.output


def test_trainer_streams_a_published_set_by_name(served):
    from nsneg.trainer.data import make_loader, resolve_urls

    server, shards, manifests = served
    server.faults = {}
    urls, samples = resolve_urls("demo@1", manifest_dirs=(str(manifests),))
    assert samples == 6 and all(u.startswith(server.base) for u in urls)
    batches = list(
        make_loader(urls, batch_size=2, image_size=32, steps=3, workers=0, seed=0, shuffle_buffer=4)
    )
    assert len(batches) == 3 and batches[0][0].shape == (2, 3, 32, 32)


def manifest_variants(shards: Path, base: str) -> dict:
    good = json.loads((shards / MANIFEST_NAME).read_text())
    good.update(name="x", version="1", base_url=base)
    for s in good["splits"]["train"]["shards"]:
        s["url"] = f"{base}/train/{s['name']}"
    variants = {}
    v = copy.deepcopy(good)
    v["format_version"] = 99
    variants["format_version 99"] = v  # noqa: E702
    v = copy.deepcopy(good)
    del v["classes"]
    variants["'classes' is a required property"] = v  # noqa: E702
    v = copy.deepcopy(good)
    v["splits"]["train"]["shards"][1]["name"] = v["splits"]["train"]["shards"][0]["name"]  # noqa: E702
    variants["duplicate shard names"] = v
    v = copy.deepcopy(good)
    v["splits"]["train"]["shards"][0]["url"] = "http://evil.example/x.tar"  # noqa: E702
    variants["outside the set's base_url"] = v
    v = copy.deepcopy(good)
    v["splits"]["train"]["shards"][0]["name"] = "evil..x.tar"  # noqa: E702
    variants["plain file name"] = v
    v = copy.deepcopy(good)
    v["splits"]["train"]["shards"][0]["name"] = "a/b.tar"  # noqa: E702
    variants["invalid at splits/train/shards/0/name"] = v
    return variants


def test_manifests_are_validated_with_clear_errors(served, tmp_path):
    server, shards, _ = served
    for i, (message, manifest) in enumerate(
        manifest_variants(shards, f"{server.base}/set").items()
    ):
        directory = tmp_path / str(i)
        directory.mkdir()
        (directory / "x-1.json").write_text(json.dumps(manifest))
        with pytest.raises(
            ManifestError,
            match=message.replace("'", ".").replace("(", ".").replace(")", "."),
        ):
            registry.find("x", [directory])


def test_publish_writes_a_card_that_hf_datasets_reads_and_warns_about_imagenet_pixels(
    data, served, tmp_path
):
    from datasets import load_dataset

    _, shards, _ = served
    folder = Path(shutil.copytree(shards, tmp_path / "set"))
    (folder / "README.md").unlink()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (
        folder / "holdout"
    ).mkdir()  # a split only the card names: HF's own guess would load train alone
    for shard in manifest["splits"]["train"]["shards"]:
        shutil.copy(folder / "train" / shard["name"], folder / "holdout" / shard["name"])
    manifest["splits"]["holdout"] = manifest["splits"]["train"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    args = ["publish", str(folder), "--base-url", "https://example.org/set", "--name", "carded"]
    result = data(*args)
    assert result.exit_code == 0, result.output
    assert "carries ImageNet pixels (source.img)" in result.output
    user_dir = registry.user_manifest_dir()  # the default: outside the installed package
    assert (
        user_dir / "carded-1.json"
    ).exists() and registry.SHIPPED_DIR.resolve() not in user_dir.resolve().parents
    assert registry.find("carded").path == user_dir / "carded-1.json"
    card = (folder / "README.md").read_text()
    assert (
        card.startswith("---\nlicense: other\n")
        and '- split: "holdout"\n    path: "holdout/*.tar"' in card
    )
    assert "ImageNet terms of access" in card and "@inproceedings{ge2021robust" in card
    assert f'"steps": [\n      {manifest["generator"]["synthesis"]["steps"][0]},' in card
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert (
        set(loaded) == {"train", "holdout"}
        and loaded["holdout"].num_rows == manifest["splits"]["train"]["samples"]
    )

    manifest["has_source"] = False  # a texture-only set: no warning
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    result = data(*args, "--version", "2")
    assert result.exit_code == 0 and "ImageNet pixels" not in result.output
    (folder / "README.md").write_text(
        "my own notes\n"
    )  # a README nsneg did not write is never replaced
    result = data(*args, "--version", "3")
    assert result.exit_code == 1 and "was not written by nsneg-data publish" in result.output
    assert (folder / "README.md").read_text() == "my own notes\n"


def test_fetch_by_folder_url_over_fsspec_and_a_mocked_hub(data, served, tmp_path, monkeypatch):
    import importlib

    from fsspec.implementations.local import LocalFileSystem

    _, shards, _ = served
    hub = tmp_path / "hub"
    shutil.copytree(shards, hub / "datasets" / "org" / "demo")

    class LocalHub(LocalFileSystem):
        """``hf://datasets/ORG/NAME/...`` answered from a local folder: huggingface_hub's HfFileSystem, no network."""

        protocol = "hf"

        @classmethod
        def _strip_protocol(cls, path):
            return str(hub / str(path).removeprefix("hf://"))

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "hf", LocalHub)
    for url, to in (
        ("hf://datasets/org/demo", tmp_path / "from-hub"),
        (f"file://{shards}", tmp_path / "from-file"),
    ):
        result = data("fetch", url, "--to", str(to), "--quiet")
        assert result.exit_code == 0, result.output
        assert "3 downloaded, 0 already verified, 0 failed" in result.output
        assert verify(to) == [] and names(to) == names(shards)
    result = data("fetch", "hf://datasets/org/nosuch", "--to", str(tmp_path / "x"))
    assert (
        result.exit_code == 1
        and "cannot read hf://datasets/org/nosuch/manifest.json" in result.output
    )


def test_fetch_messages_a_404_and_counts_retries_of_failed_shards(data, served, tmp_path):
    server, shards, manifests = served
    server.faults = {}
    moved = json.loads((manifests / "demo-1.json").read_text())
    moved.update(name="moved", base_url=f"{server.base}/nowhere")
    for shard in moved["splits"]["train"]["shards"]:
        shard["url"] = f"{server.base}/nowhere/train/{shard['name']}"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "moved-1.json").write_text(json.dumps(moved))
    to = tmp_path / "got"
    result = data(
        "fetch", "moved", "--to", str(to), "--manifest-dir", str(tmp_path / "m"), "--quiet"
    )
    assert (
        result.exit_code == 1
        and "HTTP 404 Not Found (not retried: check the set's base url)" in result.output
    )
    assert "3 failed (0 retries in all)" in result.output and ".part" not in result.output
    assert not list(to.rglob("*.part"))

    bad = f"/set/train/{names(shards)[0]}"
    server.faults = {bad: ["corrupt"] * 3}
    report = fetch(
        registry.find("demo@1", [manifests]),
        tmp_path / "again",
        show_progress=False,
        retries=2,
        backoff=0.01,
    )
    assert (
        "gave up after 3 attempts" in report.failed[f"train/{names(shards)[0]}"]
        and report.retries == 2
    )


def test_progress_bar_ends_full_when_the_server_ignores_range(served, tmp_path, capsys):
    server, shards, manifests = served
    name = names(shards)[0]
    data = (shards / "train" / name).read_bytes()
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / f".{name}.part").write_bytes(
        data[: len(data) // 2]
    )  # left by an earlier run
    server.faults = {f"/set/train/{name}": ["norange"]}
    server.requests.clear()
    report = fetch(registry.find("demo@1", [manifests]), tmp_path, show_progress=True)
    assert not report.failed and (tmp_path / "train" / name).read_bytes() == data
    assert (
        f"/set/train/{name}",
        f"bytes={len(data) // 2}-",
    ) in server.requests  # asked to resume, got it all
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert "fetch: 100%" in last


def test_preview_of_a_class_not_in_the_set_says_so(data, served, tmp_path):
    _, shards, _ = served
    result = data("preview", str(shards), "-o", str(tmp_path / "s.png"), "--classes", "nosuch")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"no class nosuch in {shards} (its classes: n00000001, n00000002)" in result.output


def altered(shard: Path) -> None:
    """Change the first sample's label in place: the shard stays a valid, decodable tar."""
    import io
    import tarfile

    with tarfile.open(shard) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    first_cls = next(i for i, (m, _) in enumerate(members) if m.name.endswith(".cls"))
    member, label = members[first_cls]
    members[first_cls] = (member, b"1" if label != b"1" else b"0")
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as out:
        for member, data in members:
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))


def test_a_streamed_shard_that_changed_is_refused_before_any_of_its_samples_is_used(
    texture_shards, tmp_path
):
    from nsneg.trainer.data import BadShards, make_loader, resolve_urls

    folder = Path(shutil.copytree(texture_shards[0], tmp_path / "www" / "set"))
    server = ShardServer(tmp_path / "www")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        shard = shard_paths(folder, "train")[1]
        expected = load_manifest(folder)["splits"]["train"]["shards"][1]["sha256"]
        altered(shard)
        assert len(list(iter_raw([shard]))) == 2  # still decodes
        urls, samples = resolve_urls(
            f"{server.base}/set"
        )  # the set's folder url: its manifest's sha256 travel along
        assert samples == 6 and urls[1] == f"{server.base}/set/train/{shard.name}#sha256={expected}"
        batches = []
        with pytest.raises(BadShards) as refused:
            for batch in make_loader(
                [urls[1]], batch_size=1, image_size=32, steps=4, workers=0, seed=0, shuffle_buffer=1
            ):
                batches.append(batch)
        actual = files.sha256_file(shard)
        assert str(refused.value).startswith(
            f"shard {server.base}/set/train/{shard.name}: sha256 {actual}, "
            f"but its manifest says {expected}"
        )
        assert batches == []  # not one sample of it reached a batch
        good = list(
            make_loader(
                [urls[0]], batch_size=2, image_size=32, steps=2, workers=0, seed=0, shuffle_buffer=2
            )
        )
        assert len(good) == 2
    finally:
        server.shutdown()
