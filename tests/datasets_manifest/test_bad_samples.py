"""Every reader of shard sets, through its command line, on a set with bad samples of every kind
(``nsneg_testing.bad_shards``; its sha256 values match, so only the sample policy protects the
reader): it finishes with the good samples and a skip report, or stops with one clear line
naming shard and key -- never a traceback."""

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nsneg.datasets_manifest.cli import main as data_cli
from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths
from nsneg.datasets_manifest.format.naming import shard_name
from nsneg.datasets_manifest.format.sample_reader import (
    BadSample,
    check_sample,
    iter_raw,
    iter_samples,
)
from nsneg.pipeline.cli import main as textures_cli
from nsneg.trainer.analysis.cli import main as analyze_cli
from nsneg.trainer.cli import main as train_cli
from nsneg.trainer.eval.cli import main as eval_cli
from nsneg_testing import SMALL_RUN, encode, photo
from nsneg_testing.bad_shards import BAD_KINDS, BAD_SOURCE_KINDS, CLASSES, make_bad_set

BAD_SHARD = shard_name("train", 2)
ALL_BAD = len(BAD_KINDS) + len(BAD_SOURCE_KINDS)
#: Sources are checked by their header unless a reader decodes them: the truncated one then passes.
HEADER_ONLY_BAD = ALL_BAD - 1


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "set"
    return root, make_bad_set(root)


@pytest.fixture
def run(cli):
    """``run(group, *args)``: the command in-process; never a traceback in what it prints."""

    def invoke(group, *args):
        result = cli(group, *args)
        assert "Traceback" not in result.output, result.output
        return result

    return invoke


def assert_stopped(result):
    """Stopped at the threshold with one clear error line naming the bad shard and a key."""
    assert result.exit_code == 1, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "above --max-skip-fraction" in error and BAD_SHARD in error and "key " in error


@pytest.mark.slow
def test_nsneg_data_stats_preview_verify(bad_set, run, tmp_path, monkeypatch):
    root, expected = bad_set
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in root.iterdir())
    assert_stopped(run(data_cli, "stats", root))
    stats = run(data_cli, "stats", root, "--max-skip-fraction", 0.9, "--json", tmp_path / "s.json")
    assert stats.exit_code == 0, stats.output
    assert f"bad samples skipped in reading: {HEADER_ONLY_BAD}" in stats.output
    info = json.loads((tmp_path / "s.json").read_text())["splits"]["train"]
    assert info["bad_samples"]["skipped"] == HEADER_ONLY_BAD
    assert sum(info["per_class"].values()) == expected["good"] + 1
    assert (tmp_path / "losses.png").exists()  # where it was run, not in the set

    sheet = run(
        data_cli, "preview", root, "-o", tmp_path / "p.png", "--n", 40, "--max-skip-fraction", 0.9
    )
    assert sheet.exit_code == 0 and f"skipped {ALL_BAD} bad samples" in sheet.output
    assert_stopped(run(data_cli, "preview", root, "-o", tmp_path / "q.png", "--n", 40))

    verified = run(
        data_cli, "verify", root, "--max-skip-fraction", 0.9, "--json", tmp_path / "v.json"
    )
    assert verified.exit_code == 0 and "0 of 3 shards bad" in verified.output
    assert json.loads((tmp_path / "v.json").read_text())["bad_samples"]["train"]["skipped"] == (
        HEADER_ONLY_BAD
    )
    assert_stopped(run(data_cli, "verify", root))
    assert run(data_cli, "verify", root, "--no-check-samples").exit_code == 0

    assert sorted(p.name for p in root.iterdir()) == before  # nothing written into the set


def test_nsneg_data_fetch_reports_the_bad_samples_it_fetched(bad_set, run, tmp_path):
    root, expected = bad_set
    handler = partial(SimpleHTTPRequestHandler, directory=str(root.parent))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{root.name}"
        stopped = run(data_cli, "fetch", url, "--to", tmp_path / "a", "--quiet")
        assert_stopped(stopped)
        assert "3 downloaded" in stopped.output  # the verified shards stay
        fetched = run(
            data_cli, "fetch", url, "--to", tmp_path / "b", "--quiet", "--max-skip-fraction", 0.9
        )
        assert fetched.exit_code == 0, fetched.output
        assert f"{expected['good'] + 1} good samples, skipped {HEADER_ONLY_BAD}" in fetched.output
    finally:
        server.shutdown()


@pytest.mark.slow
def test_nsneg_textures_pair_skips_bad_texture_samples(run, tmp_path):
    textures = tmp_path / "textures"
    expected = make_bad_set(textures, with_source=False)
    imagenet = tmp_path / "imagenet"
    keys = {}
    for raw in iter_raw(shard_paths(textures, "train")):
        try:
            sample = check_sample(raw, CLASSES, has_source=False)
        except BadSample:
            continue
        keys[sample.key] = sample.meta["wnid"]
    for key, wnid in keys.items():
        (imagenet / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (imagenet / "train" / wnid / f"{key}.JPEG").write_bytes(encode(photo(), "JPEG"))
    paired = run(
        textures_cli, "pair", "--textures", textures, "--imagenet", imagenet, "--out",
        tmp_path / "paired", "--quiet",
    )  # fmt: skip
    assert paired.exit_code == 0, paired.output
    assert f"paired     {expected['good']}" in paired.output
    manifest = load_manifest(tmp_path / "paired")
    reasons = {s["key"]: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert set(reasons) == set(BAD_KINDS) and all(
        reasons[k].startswith(v) for k, v in BAD_KINDS.items()
    )
    good = list(iter_samples(tmp_path / "paired", "train"))
    assert len(good) == expected["good"]


@pytest.mark.slow
def test_nsneg_eval_knn_linear_and_nsneg_analyze(bad_set, run, tmp_path, make_checkpoint):
    root, expected = bad_set
    ckpt = make_checkpoint(tmp_path / "ck.pt")
    common = [
        "--checkpoint", ckpt, "--train", root, "--val", root, "--val-split", "train",
        "--image-size", 32, "--batch-size", 8, "--device", "cpu",
    ]  # fmt: skip
    assert_stopped(run(eval_cli, "knn", *common, "--workers", 0))
    knn = run(
        eval_cli, "knn", *common, "--workers", 2, "--k", 3, "--max-skip-fraction", 0.9,
        "--json", tmp_path / "knn.json",
    )  # fmt: skip
    assert knn.exit_code == 0, knn.output
    assert f"train: skipped {ALL_BAD} bad samples" in knn.output
    result = json.loads((tmp_path / "knn.json").read_text())
    assert result["skipped"]["val"]["skipped"] == ALL_BAD
    assert result["train_samples"] == result["val_samples"] == expected["good"]
    head = tmp_path / "head.pt"
    linear = run(
        eval_cli, "linear", *common, "--workers", 0, "--epochs", 1, "--max-skip-fraction", 0.9,
        "--out", head,
    )  # fmt: skip
    assert linear.exit_code == 0 and f"val: skipped {ALL_BAD} bad samples" in linear.output

    analysis = ["--device", "cpu", "--image-size", 32, "--workers", 0, "--batch-size", 8]
    assert_stopped(
        run(analyze_cli, "texture-classes", "--shards", root, "--features", "pixels",
            "--out-dir", tmp_path / "tc0", "--epochs", 1, *analysis)
    )  # fmt: skip
    classes = run(
        analyze_cli, "texture-classes", "--shards", root, "--features", "pixels", "--epochs", 1,
        "--holdout", 0.5, "--out-dir", tmp_path / "tc", "--max-skip-fraction", 0.9, *analysis,
    )  # fmt: skip
    assert classes.exit_code == 0, classes.output
    assert f"texture: skipped {HEADER_ONLY_BAD} bad samples" in classes.output
    assert f"source: skipped {ALL_BAD} bad samples" in classes.output
    report = json.loads((tmp_path / "tc" / "texture-classes.json").read_text())
    assert report["bad_samples"]["texture"]["skipped"] == HEADER_ONLY_BAD

    bias = run(
        analyze_cli, "shape-bias", "--checkpoint", ckpt, "--linear-head", head, "--from-shards",
        root, "--n", 6, "--out-dir", tmp_path / "sb", "--max-skip-fraction", 0.9, *analysis,
    )  # fmt: skip
    assert bias.exit_code == 0, bias.output
    assert "shards: skipped" in bias.output
    assert json.loads((tmp_path / "sb" / "shape-bias.json").read_text())["bad_samples"][
        "skipped"
    ] >= (HEADER_ONLY_BAD)


@pytest.mark.slow
def test_nsneg_train_skips_and_counts(bad_set, run, tmp_path):
    root, _ = bad_set
    small = [
        *[a for k, v in SMALL_RUN.items() for a in ("--" + k.replace("_", "-"), str(v))],
        "--shuffle-buffer", "4", "--device", "cpu", "--steps-per-epoch", 6, "--epochs", 1,
    ]  # fmt: skip
    stopped = run(train_cli, *small, "--negatives", root, "--out", tmp_path / "a")
    assert stopped.exit_code != 0 and "above --max-skip-fraction" in stopped.output
    trained = run(
        train_cli, *small, "--negatives", root, "--out", tmp_path / "b", "--max-skip-fraction", 0.95
    )
    assert trained.exit_code == 0, trained.output
    import torch

    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert (
        state["samples_seen"] == 24 and 0 < state["skipped"] <= ALL_BAD
    )  # counted, named in the log
    assert f"{state['skipped']} bad samples skipped" in trained.output  # and in the summary
