"""The built wheel, installed into a fresh virtual environment beside other distributions that
claim the top-level names ``trainer`` and ``pipeline``, runs the demo texture job and a training
step from outside the checkout.

The environment reuses this interpreter's site-packages (torch, Ray, ...) through a ``.pth`` path
line. A path line only extends ``sys.path``: the ``.pth`` files inside that folder (among them
the checkout's editable finder) are not processed, so ``nsneg`` can only come from the wheel."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The repository's top-level folders and the subpackages they install as.
FOLDERS = {
    "pipeline": "nsneg/pipeline",
    "trainer": "nsneg/trainer",
    "datasets_manifest": "nsneg/datasets_manifest",
}


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done


def build_wheel(source: Path, dest: Path) -> Path:
    """``pip wheel`` with this interpreter's setuptools (no build isolation: nothing downloaded)."""
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dest,
            source,
        ]
    )
    (wheel,) = dest.glob("*.whl")  # dest: a folder of its own
    return wheel


def other_distribution(root: Path, name: str, package: str) -> Path:
    """A distribution ``name`` installing the top-level package ``package`` (as Coqui's ``trainer``
    and PyPI's ``pipeline`` do)."""
    source = root / name
    (source / package).mkdir(parents=True)
    (source / package / "__init__.py").write_text(f"OWNER = {name!r}\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "1.0"\n'
        f'[tool.setuptools]\npackages = ["{package}"]\n'
    )
    return build_wheel(source, root / f"{name}-dist")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """What the wheel is built from, copied out of the checkout: a build leaves nothing there,
    and no stale ``build/`` folder can lend the wheel a file the checkout no longer has."""
    import shutil

    root = tmp_path_factory.mktemp("source") / "nsneg"
    root.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, root / name)
    for folder in FOLDERS:
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    return build_wheel(source, tmp_path_factory.mktemp("dist"))


@pytest.mark.slow
def test_wheel_holds_one_top_level_package_with_its_modules_and_data(source, wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"nsneg", "nsneg-0.1.0.dist-info"}
    for folder, package in FOLDERS.items():
        for path in (source / folder).rglob("*"):
            if path.is_file():
                relative = path.relative_to(source / folder).as_posix()
                assert f"{package}/{relative}" in names, relative  # every module and data file
    assert "nsneg-0.1.0.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read("nsneg-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_job_and_a_training_step_beside_trainer_and_pipeline(
    wheel, tmp_path
):
    wheels = [
        wheel,
        other_distribution(tmp_path / "others", "coqui-like-trainer", "trainer"),
        other_distribution(tmp_path / "others", "other-pipeline", "pipeline"),
    ]
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    env_site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    )
    # torch, Ray, ... from this interpreter, after the environment's own packages
    here = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    (env_site / "zz-reuse-installed.pth").write_text("\n".join(dict.fromkeys(here)) + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            *wheels,
        ]
    )

    work = tmp_path / "work"  # outside the checkout
    work.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    where = json.loads(
        run(
            [
                python,
                "-c",
                "import json, nsneg, nsneg.pipeline, nsneg.trainer.cli, trainer, pipeline;"
                "print(json.dumps([list(nsneg.__path__), nsneg.pipeline.__file__,"
                " nsneg.trainer.cli.__file__, trainer.OWNER, pipeline.OWNER]))",
            ],
            cwd=work,
            env=clean,
        ).stdout
    )
    assert where[0] == [str(env_site / "nsneg")]
    assert all(Path(f).is_relative_to(env_site / "nsneg") for f in where[1:3])
    assert where[3:] == ["coqui-like-trainer", "other-pipeline"]  # theirs, untouched

    built = run(
        [env / "bin" / "nsneg-textures", "build", "--out", "shards", "--steps", "2,1,1", "--quiet"],
        cwd=work,
        env=clean,
    )
    assert "images     10" in built.stdout and "skipped    0" in built.stdout
    assert "Started a local Ray instance" not in built.stdout + built.stderr
    trained = run(
        [
            env / "bin" / "nsneg-train",
            "--negatives",
            "shards",
            "--out",
            "run",
            *("--arch", "resnet18", "--image-size", "32", "--batch-size", "4"),
            *("--moco-k", "16", "--bn-splits", "2", "--workers", "0", "--shuffle-buffer", "4"),
            *("--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu"),
        ],
        cwd=work,
        env=clean,
    )
    log = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    assert any("loss" in entry for entry in log), trained.stdout
    assert (work / "run" / "checkpoint.pt").is_file()
