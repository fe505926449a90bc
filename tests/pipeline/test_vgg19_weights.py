"""VGG19 weights for users who are online: torchvision's weights API downloads them into the torch
hub cache (hash-checked, with progress) when missing; offline (``NSNEG_OFFLINE=1``, ``--offline``)
refuses as before. The "download" is from a file served on 127.0.0.1: nothing leaves the machine."""

import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch
from torchvision.models import VGG19_Weights

from nsneg.pipeline.encoders import (
    OFFLINE_ENV,
    WeightsNotFound,
    default_vgg19_path,
    load_vgg19_state_dict,
)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A small state dict served on 127.0.0.1 under a torchvision-style name (``vgg19-<sha256[:8]>.pth``),
    torchvision's VGG19 url pointed at it and the torch hub cache in ``tmp_path``; yields
    (state, requests served so far: a list)."""
    state = {
        "features.0.weight": torch.arange(27.0).view(1, 3, 3, 3),
        "features.0.bias": torch.ones(1),
    }
    root = tmp_path / "www"
    root.mkdir()
    staging = root / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"vgg19-{digest[:8]}.pth"
    staging.rename(root / name)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    weights = VGG19_Weights.IMAGENET1K_V1.value
    monkeypatch.setattr(weights, "url", f"http://127.0.0.1:{server.server_address[1]}/{name}")
    hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    yield state, requests, root / name
    torch.hub.set_dir(hub)
    server.shutdown()
    server.server_close()


def test_missing_weights_are_downloaded_into_the_torch_cache_once_with_progress(served, capfd):
    state, requests, _ = served
    assert not default_vgg19_path().exists()
    loaded = load_vgg19_state_dict(None)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert default_vgg19_path().is_file() and len(requests) == 1
    assert "%" in capfd.readouterr().err  # torch.hub's progress bar
    again = load_vgg19_state_dict(None)  # from the cache: no second request
    assert torch.equal(again["features.0.bias"], state["features.0.bias"]) and len(requests) == 1


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_refuses_to_download_and_says_how_to_get_the_file(served, monkeypatch, how):
    _, requests, _ = served
    if how == "env":
        monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(WeightsNotFound, match="offline") as e:
        load_vgg19_state_dict(None, offline=True if how == "argument" else None)
    assert "curl -L -o" in str(e.value) and "--encoder random" in str(e.value)
    assert requests == [] and not default_vgg19_path().exists()


def test_a_prefilled_cache_is_read_without_a_request_even_offline(served, monkeypatch):
    state, requests, file = served
    default_vgg19_path().parent.mkdir(parents=True)
    default_vgg19_path().write_bytes(file.read_bytes())
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert torch.equal(load_vgg19_state_dict(None)["features.0.weight"], state["features.0.weight"])
    assert requests == []


def test_a_download_that_does_not_match_its_hash_is_refused(served):
    _, requests, file = served
    file.write_bytes(file.read_bytes() + b"tampered")
    with pytest.raises(WeightsNotFound, match="could not be downloaded"):
        load_vgg19_state_dict(None, progress=False)
    assert len(requests) == 1 and not default_vgg19_path().exists()
