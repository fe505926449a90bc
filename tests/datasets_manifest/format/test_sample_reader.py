"""The sample policy (``sample_reader``): every bad sample a tar file can carry is skipped with its shard,
key and reason; past the threshold one clear error; a bomb is never decoded (peak memory measured)."""

import json
import subprocess
import sys
import textwrap

import pytest

from nsneg.datasets_manifest.format.manifest import shard_paths
from nsneg.datasets_manifest.format.sample_reader import (
    BadSample,
    check_sample,
    iter_checked,
    iter_raw,
    iter_samples,
)
from nsneg.datasets_manifest.format.skip_log import SkipLog, TooManyBadSamples
from nsneg_testing.bad_shards import BAD_KINDS, BAD_SOURCE_KINDS, make_bad_set


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-set")
    return root, make_bad_set(root)


def test_every_bad_kind_is_skipped_with_its_reason_and_the_good_ones_read(bad_set):
    root, expected = bad_set
    skips = SkipLog(1.0)
    good = list(iter_samples(root, "train", skips, decode_source=True))
    assert len(good) == expected["good"] and {s.key for s in good} >= {"good_0", "good_last"}
    assert all(s.texture.size == (224, 224) and s.source().mode == "RGB" for s in good)
    reasons = {s["key"]: s["reason"] for s in skips.skipped}
    kinds = {**BAD_KINDS, **BAD_SOURCE_KINDS}
    assert set(reasons) == set(kinds) and len(skips.skipped) == expected["bad"]
    for key, start in kinds.items():
        assert reasons[key].startswith(start), (key, reasons[key])
    shard = str(shard_paths(root, "train")[2])
    assert {s["shard"] for s in skips.skipped} == {shard}
    report = skips.finish()
    assert report["skipped"] == expected["bad"] and report["read"] == expected["good"]
    assert sum(report["skip_reasons"].values()) == expected["bad"]


def test_a_set_without_sources_refuses_a_source_member_and_checks_source_headers_lazily(bad_set):
    root, _ = bad_set
    raw = next(iter_raw(shard_paths(root, "train")[:1]))
    with pytest.raises(BadSample, match="unexpected member source.img"):
        check_sample(raw, has_source=False)
    without = {k: v for k, v in raw.items() if k != "source.img"}
    with pytest.raises(BadSample, match="missing member source.img"):
        check_sample(without, has_source=True)
    sample = check_sample(raw, ["a", "b", "c", "d"], has_source=True)
    assert sample.source_image is None and sample.source().mode == "RGB"


def test_past_the_threshold_one_clear_error_naming_shard_and_key(bad_set):
    root, expected = bad_set
    with pytest.raises(TooManyBadSamples) as stopped:
        list(iter_samples(root, "train", SkipLog(0.1)))
    message = str(stopped.value)
    assert (
        "above --max-skip-fraction 0.1" in message
        and "imagenet-texture-train-000002.tar" in message
    )
    total = expected["good"] + expected["bad"]
    assert message.startswith(f"{int(0.1 * total) + 1} bad samples of {total}")
    with pytest.raises(TooManyBadSamples, match="key truncated_texture"):
        list(iter_samples(root, "train"))  # no log given: the first bad sample stops


def test_workers_spool_their_skips_to_the_main_process(bad_set, tmp_path):
    import torch

    root, expected = bad_set

    class Keys(torch.utils.data.IterableDataset):
        def __init__(self, skips):
            self.skips = skips

        def __iter__(self):
            for s in iter_samples(root, "train", self.skips, decode_source=True):
                yield s.cls

    skips = SkipLog(1.0, spool=tmp_path / "spool")
    loader = torch.utils.data.DataLoader(Keys(skips), batch_size=None, num_workers=2)
    assert len(list(loader)) == expected["good"]
    report = skips.finish()
    assert (report["read"], report["skipped"]) == (expected["good"], expected["bad"])


def test_a_cut_shard_ends_with_one_skip_for_its_rest(bad_set, tmp_path):
    root, _ = bad_set
    shard = shard_paths(root, "train")[0]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    skips = SkipLog(1.0)
    good = list(iter_checked([cut], skips, has_source=True))
    assert 0 < len(good) < 6
    assert skips.skipped[-1]["key"] == "(rest of shard)" and skips.skipped[-1]["kind"] == "tar"
    assert "not a readable tar from here on" in skips.skipped[-1]["reason"]


@pytest.mark.slow
def test_the_bomb_shard_is_read_in_bounded_memory(bad_set):
    """Decoding the 81 Mpx PNG bomb would take >= 81 MB (243 MB as RGB); the 11000 x 11000
    JPEG 363 MB. Reading the whole bad shard, sources decoded, must stay far below that."""
    root, _ = bad_set
    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        from nsneg.datasets_manifest.format.manifest import shard_paths
        from nsneg.datasets_manifest.format.sample_reader import BadSample, check_sample, iter_checked, iter_raw, iter_samples
        from nsneg.datasets_manifest.format.skip_log import SkipLog, TooManyBadSamples
        list(iter_samples(Path({str(root)!r}), "train", SkipLog(1.0)))  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        skips = SkipLog(1.0)
        n = len(list(iter_samples(Path({str(root)!r}), "train", skips, decode_source=True)))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"good": n, "skipped": len(skips.skipped), "kib": after - before}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    measured = json.loads(out.splitlines()[-1])
    assert measured["skipped"] == len(BAD_KINDS) + len(BAD_SOURCE_KINDS)
    assert measured["kib"] < 40 * 1024, measured  # peak RSS growth under 40 MiB
