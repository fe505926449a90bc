"""Two people: a publisher publishes a set and serves its folder on 127.0.0.1; a fetcher, in
another folder and process with its own nsneg folders, fetches it by url and by name and gets
the same name, version, splits, card and (through Hugging Face ``datasets``) split names."""

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nsneg.datasets_manifest.format.manifest import load_manifest, verify
from nsneg_testing.bad_shards import make_clean_set


def nsneg_data(cwd, home, *args):
    """``nsneg-data ARGS`` in a process of its own, with its own manifest and cache folders."""
    env = {
        **os.environ,
        "NSNEG_MANIFEST_DIR": str(home / "sets"),
        "NSNEG_CACHE_DIR": str(home / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "nsneg.datasets_manifest.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True,
    )  # fmt: skip


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "publisher" / "www"
    www.mkdir(parents=True)
    handler = partial(SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.slow
def test_publish_then_fetch_by_url_and_by_name_between_two_people(server, tmp_path):
    from datasets import load_dataset

    www, host = server
    publisher, fetcher = tmp_path / "publisher", tmp_path / "fetcher"
    fetcher.mkdir()
    folder = make_clean_set(www / "in4-texture")
    base = f"{host}/in4-texture"
    published = nsneg_data(
        publisher, publisher, "publish", folder, "--base-url", base, "--name", "in4-texture"
    )
    assert published.returncode == 0, published.stderr
    assert (folder / "in4-texture-1.json").is_file()  # in the folder that is served

    by_url = nsneg_data(fetcher, fetcher, "fetch", base, "--to", "by-url", "--quiet")
    assert by_url.returncode == 0, by_url.stderr
    assert by_url.stdout.startswith("in4-texture@1 -> by-url: 2 downloaded")
    unknown = nsneg_data(fetcher, fetcher, "fetch", "in4-texture@1", "--to", "x", "--quiet")
    assert unknown.returncode == 1 and "--manifest-dir" in unknown.stderr
    by_name = nsneg_data(
        fetcher, fetcher, "fetch", "in4-texture@1", "--manifest-dir", base, "--to", "by-name",
        "--quiet",
    )  # fmt: skip
    assert by_name.returncode == 0, by_name.stderr

    card = (folder / "README.md").read_text()
    assert f"nsneg-data fetch {base} --to DIR" in card and "hf://" not in card
    for copy in (fetcher / "by-url", fetcher / "by-name"):
        manifest = load_manifest(copy)
        assert (manifest["name"], manifest["version"]) == ("in4-texture", "1")
        assert list(manifest["splits"]) == ["train", "val"] and verify(copy) == []
        assert (copy / "README.md").read_text() == card
        assert nsneg_data(fetcher, fetcher, "verify", copy).returncode == 0
    splits = {
        str(where): sorted(load_dataset(str(where), cache_dir=str(tmp_path / "hf")).keys())
        for where in (folder, fetcher / "by-url", fetcher / "by-name")
    }
    assert set(map(tuple, splits.values())) == {("train", "val")}, splits
    listed = nsneg_data(fetcher, fetcher, "list", "--manifest-dir", fetcher / "by-name")
    assert listed.returncode == 0 and "in4-texture@1" in listed.stdout, listed.stderr
    assert json.loads((fetcher / "by-name" / "in4-texture-1.json").read_text()) == json.loads(
        (folder / "in4-texture-1.json").read_text()
    )


def test_the_cards_load_commands_follow_where_the_set_was_published(tmp_path):
    from nsneg.datasets_manifest import card

    manifest = load_manifest(make_clean_set(tmp_path / "set"))
    hub = card.render({**manifest, "base_url": "hf://datasets/someone/in4"}, "in4", "2")
    assert 'load_dataset("someone/in4")' in hub
    assert "nsneg-data fetch in4@2 --manifest-dir hf://datasets/someone/in4 --to DIR" in hub
    web = card.render({**manifest, "base_url": "https://example.org/in4"}, "in4", "2")
    assert "hf://" not in web and 'load_dataset("DIR")' in web
    assert "nsneg-data fetch https://example.org/in4 --to DIR" in web
    assert '- split: "val"\n    path: "val/*.tar"' in web


def walkthrough() -> list[str]:
    """The command lines of docs/datasets.md's walk-through block, as a user would type them."""
    docs = Path(__file__).parents[2] / "docs" / "datasets.md"
    block = docs.read_text().split("<!-- walkthrough -->\n```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
def test_the_documented_walkthrough_runs_as_written(tmp_path):
    publisher, fetcher = tmp_path / "publisher", tmp_path / "fetcher"
    fetcher.mkdir()
    make_clean_set(publisher / "shards")  # in place of the demo set: same layout, no Ray build
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = [line.replace("8000", str(port)) for line in walkthrough()]
    server = None
    try:
        for line in lines:
            args = shlex.split(line.rstrip(" &"))
            if args[0] == "python":
                server = subprocess.Popen([sys.executable, *args[1:]], cwd=publisher,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                for _ in range(100):
                    with socket.socket() as probe:
                        if probe.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.1)
                continue
            assert args[0] == "nsneg-data", line
            who = publisher if args[1] == "publish" else fetcher
            done = nsneg_data(who, who, *args[1:])
            assert done.returncode == 0, (line, done.stdout, done.stderr)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    assert "nsneg-demo@1" in done.stdout  # the last line lists the fetched copy's manifest
    for copy in ("demo-by-url", "demo-by-name"):
        manifest = load_manifest(fetcher / copy)
        assert (manifest["name"], manifest["version"]) == ("nsneg-demo", "1")
        assert (fetcher / copy / "README.md").read_text() == (
            publisher / "shards" / "README.md"
        ).read_text()
