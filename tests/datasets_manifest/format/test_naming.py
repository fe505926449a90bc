"""Shard-set naming: keys a webdataset reader splits correctly."""

from nsneg.datasets_manifest.format.naming import safe_key


def test_safe_key_has_no_dot_and_keeps_distinct_stems_apart():
    assert safe_key("n01_x") == "n01_x"
    a, b = safe_key("a.b"), safe_key("a_b.")
    assert "." not in a and a != b and a.startswith("a_b-")
