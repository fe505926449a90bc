"""``nsneg-train`` as a user reruns it: an existing run folder is refused, --resume takes --epochs and
says what changed, nothing left to do is said plainly, local shards are hashed once per machine, and
SIGTERM leaves a checkpoint to resume from."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nsneg.trainer import checkpoint
from nsneg.trainer.cli import main
from nsneg_testing import SMALL_RUN


def as_options(fields: dict) -> list[str]:
    """TrainConfig fields as nsneg-train options: ``image_size=32`` -> ``--image-size 32``."""
    return [arg for k, v in fields.items() for arg in ("--" + k.replace("_", "-"), str(v))]


#: The tests' small run on the CPU as nsneg-train options (``train`` adds one step an epoch).
SMALL = [*as_options(SMALL_RUN), "--shuffle-buffer", "4", "--device", "cpu"]


@pytest.fixture
def shards(texture_shards, tmp_path):
    """A fresh copy: its shards are not yet in the verified cache."""
    return Path(shutil.copytree(texture_shards[0], tmp_path / "shards"))


@pytest.fixture
def train(cli):
    """``train(*args)``: ``nsneg-train`` in-process, small and one step an epoch."""

    def run(*args):
        result = cli(main, *SMALL, "--steps-per-epoch", 1, *args)
        assert "Traceback" not in result.output, result.output
        return result

    return run


def epochs_logged(out: Path) -> int:
    return sum(
        "epoch_end" in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
    )


def test_an_existing_run_folder_is_refused_without_resume_or_force(train, shards, tmp_path):
    out = tmp_path / "run"
    assert train("--negatives", shards, "--out", out, "--epochs", "1").exit_code == 0
    before = (out / "checkpoint.pt").read_bytes(), (out / "log.jsonl").read_text()
    again = train("--negatives", shards, "--out", out, "--epochs", "1")
    assert (
        again.exit_code == 2
        and "already holds a run (checkpoint.pt, log.jsonl, config.yaml, tensorboard)"
        in again.output
    )
    assert f"--resume {out / 'checkpoint.pt'}" in again.output and "--force" in again.output
    assert ((out / "checkpoint.pt").read_bytes(), (out / "log.jsonl").read_text()) == before
    forced = train("--negatives", shards, "--out", out, "--epochs", "1", "--force", "--verify")
    assert forced.exit_code == 0 and "--force: removed" in forced.output
    assert (
        "verified 3 train shards" in forced.output
    )  # --verify: hashed again though verified before
    assert epochs_logged(out) == 1  # the log holds one run, not two


def test_resume_takes_epochs_says_what_changed_and_hashes_local_shards_once(
    train, shards, tmp_path
):
    out = tmp_path / "run"
    first = train("--negatives", shards, "--out", out, "--epochs", "2")
    assert first.exit_code == 0 and f"verified 3 train shards of {shards}" in first.output
    ckpt = out / "checkpoint.pt"
    longer = train("--resume", ckpt, "--epochs", "3")
    assert longer.exit_code == 0, longer.output
    assert (
        "train shards verified before on this machine" in longer.output
    )  # cached by path, size and mtime
    assert (
        "resume: --epochs 2 -> 3; the cosine learning-rate schedule now spans 3 epochs"
        in longer.output
    )
    assert "done: epochs 0-2" in longer.output and "nan" not in longer.output
    assert checkpoint.load(ckpt)["epoch"] == 3 and epochs_logged(out) == 3
    finished = train("--resume", ckpt, "--verify")
    assert finished.exit_code == 0 and "nan" not in finished.output
    assert (
        f"nothing to do: {ckpt} has finished 3 of 3 epochs (pass --epochs N with N > 3"
        in finished.output
    )
    assert epochs_logged(out) == 3
    unsafe = train("--resume", ckpt, "--epochs", "4", "--moco-t", "0.5")
    assert (
        unsafe.exit_code == 2
        and "--moco-t cannot change on --resume (the run used 0.2)" in unsafe.output
    )

    tar = sorted((shards / "train").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[600] ^= 1  # same size, new mtime: hashed again and refused
    tar.write_bytes(bytes(data))
    bad = train("--resume", ckpt, "--epochs", "4")
    assert bad.exit_code == 1 and f"{tar}: sha256 mismatch" in bad.output
    assert checkpoint.load(ckpt)["epoch"] == 3


def test_verify_rehashes_shards_verified_before(shards, tmp_path):
    from nsneg.trainer.data import verify_local

    assert (
        verify_local(shards) == 3
        and verify_local(shards) == 0
        and verify_local(shards, reverify=True) == 3
    )


def test_sigterm_writes_a_checkpoint_before_exit(shards, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "nsneg.trainer.cli",
        *SMALL,
        "--negatives",
        str(shards),
        "--out",
        str(out),
    ]
    cmd += ["--epochs", "50", "--steps-per-epoch", "50"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["epoch"] == 0 and state["step"] >= 1 and "resume with --resume" in output
    assert "stopping after this step, writing checkpoint" in output  # said at once


@pytest.mark.slow  # torchrun and two training processes
def test_ctrl_c_under_torchrun_stops_with_one_resume_line(shards, tmp_path):
    """Ctrl-C reaches torchrun and both workers (one process group, as from a terminal): the
    workers stop after the same step with a checkpoint, rank 0 says how to resume (once), torchrun
    passing the signal on again is not a second Ctrl-C, and no traceback is printed."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nsneg.trainer.torchrun", "--nproc-per-node", "2"]
    cmd += ["--standalone", "-m", "nsneg.trainer.cli", *SMALL, "--batch-size", "8"]
    cmd += ["--negatives", str(shards), "--out", str(out), "--epochs", "50"]
    cmd += ["--steps-per-epoch", "50", "--log-every", "1"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert "Traceback" not in output and "SignalException" not in output, output
    assert output.count("resume with --resume") == 1, output
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["step"] >= 1 and f"at step {state['step']};" in output


def test_every_config_field_and_method_setting_is_an_option_with_the_same_default():
    """One source of truth: nsneg-train's options are TrainConfig's fields and each method's
    settings, defaults and help included (``--small-images`` alone defaults to "decide from
    --image-size")."""
    import dataclasses

    from nsneg.trainer.cli import SAFE_ON_RESUME
    from nsneg.trainer.config import run_fields
    from nsneg.trainer.methods import METHODS

    params = {p.name: p for p in main.params}
    fields = {f.name: f for f in run_fields()}
    fields |= {
        f"{name}_{f.name}": f
        for name, method in METHODS.items()
        for f in dataclasses.fields(method.Settings)
    }
    for name, f in fields.items():
        assert name in params, f"{name} has no option"
        default = params[name].default
        default = tuple(default) if isinstance(default, list) else default
        expected = None if name == "small_images" else f.default
        assert default == expected or (default, expected) == ((), ()), name
        assert params[name].help == f.metadata.get("help", ""), name
    assert params["moco_k"].opts == ["--moco-k"] and params["moco_k"].default == 16384
    assert {"config_file", "resume", "force", "reverify", "device"} == params.keys() - fields.keys()
    assert set(SAFE_ON_RESUME) <= fields.keys()


@pytest.mark.slow  # a fresh interpreter
def test_the_command_line_imports_no_torch_until_a_command_runs():
    """``nsneg-train --help`` is quick: importing the command (and printing its help) loads
    neither torch, torchvision nor ray; the method names come from the registry all the same."""
    probe = (
        "import sys; from click.testing import CliRunner; from nsneg.trainer.cli import main; "
        "out = CliRunner().invoke(main, ['--help']).output; "
        "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules)); "
        "print('[moco|byol|simclr]' in out)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert found == ["[]", "True"]


def test_byol_trains_from_the_command_line_and_resumes(train, shards, tmp_path):
    out = tmp_path / "byol"
    small = ["--byol-proj-hidden-dim", 32, "--byol-proj-dim", 16, "--byol-pred-hidden-dim", 32]
    first = train("--negatives", shards, "--out", out, "--epochs", 1, "--method", "byol", *small)
    assert first.exit_code == 0, first.output
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["method"] == "byol" and state["config"]["optimizer"] is None
    more = train("--resume", out / "checkpoint.pt", "--epochs", 2)
    assert more.exit_code == 0 and "done: epochs 0-1" in more.output, more.output
    other = train("--resume", out / "checkpoint.pt", "--epochs", 3, "--method", "simclr")
    assert other.exit_code == 2 and "--method cannot change on --resume" in other.output


@pytest.mark.slow
def test_a_simclr_checkpoint_goes_through_nsneg_eval_knn(
    train, shards, texture_shards, tmp_path, cli
):
    from nsneg.trainer.eval.cli import main as evaluate

    out = tmp_path / "simclr"
    small = ["--simclr-proj-hidden-dim", 32, "--simclr-proj-dim", 16]
    done = train("--negatives", shards, "--out", out, "--epochs", 1, "--method", "simclr", *small)
    assert done.exit_code == 0, done.output
    photos = texture_shards[1] / "train"
    result = cli(
        evaluate, "knn", "--checkpoint", out / "checkpoint.pt", "--train", photos, "--val", photos,
        "--k", 2, "--workers", 0,
    )  # fmt: skip
    assert result.exit_code == 0 and result.stdout.startswith("knn top-1: "), result.output
