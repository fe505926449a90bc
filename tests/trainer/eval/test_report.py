"""nsneg.trainer.eval.report: tables, the percentage cell, PNG and report files written atomically."""

import json

import pytest
from PIL import Image

from nsneg.trainer.eval import report


def test_text_table_aligns_columns():
    text = report.text_table(["class", "n"], [["n01440764", 3], ["a", 12]])
    assert text.split("\n") == ["class      n", "---------  --", "n01440764  3", "a          12"]


def test_markdown_table_escapes_pipes():
    text = report.markdown_table(["set", "top-1"], [["a|b", "1.0"], ["c", 2]])
    assert text.split("\n") == ["| set | top-1 |", "|---|---|", "| a\\|b | 1.0 |", "| c | 2 |"]


@pytest.mark.parametrize(
    "value,kwargs,expected",
    [
        (0.1234, {}, "12.3%"),
        (None, {}, "-"),
        (0.5, {"digits": 2, "suffix": ""}, "50.00"),
        (None, {"missing": "n/a"}, "n/a"),
        (1.0, {"digits": 0}, "100%"),
    ],
)
def test_percent(value, kwargs, expected):
    assert report.percent(value, **kwargs) == expected


def test_save_png_and_write_report(tmp_path):
    fig = report.figure(3, 2)
    fig.add_subplot().bar(["a", "b"], [1, 2])
    report.save_png(fig, tmp_path / "plots" / "bars.png", dpi=50)
    with Image.open(tmp_path / "plots" / "bars.png") as png:
        assert png.format == "PNG" and png.size == (150, 100)
    report.write_report(tmp_path / "out", "thing", {"b": 1, "a": [1, 2]}, "# Thing\n\n\n")
    assert json.loads((tmp_path / "out" / "thing.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (tmp_path / "out" / "thing.md").read_text() == "# Thing\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "thing.json",
        "thing.md",
    ]  # no temporaries
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["bars.png"]


def test_figures_leave_pyplot_alone():
    import matplotlib

    backend = matplotlib.get_backend()
    report.figure(1, 1)
    assert matplotlib.get_backend() == backend
