"""nsneg.trainer.eval.probes: the kNN and linear-probe maths against their definitions, and linear
heads on disk."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsneg.trainer.eval import probes

# --------------------------------------------------------------------------- kNN


def naive_knn(train_x, train_y, test_x, test_y, k, T, num_classes) -> float:
    """One test row at a time, straight from the definition."""
    correct = 0
    for x, y in zip(test_x, test_y):
        sims = [float(F.cosine_similarity(x, t, dim=0)) for t in train_x]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        scores = [0.0] * num_classes
        for i in order:
            scores[int(train_y[i])] += float(np.exp(sims[i] / T))
        correct += int(np.argmax(scores) == int(y))
    return correct / len(test_y)


def clusters(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_knn_separates_clusters_and_is_chance_on_shuffled_labels():
    train_x, train_y = clusters(30, 5, 32, seed=0)
    test_x, test_y = clusters(10, 5, 32, seed=1)
    assert (
        probes.knn_accuracy(train_x * 7.0, train_y, test_x, test_y, k=20, T=0.07) == 1.0
    )  # scale-free
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    accs = [
        probes.knn_accuracy(*clusters(200, 5, 32, seed=s), test_x, test_y[torch.randperm(50)], k=20)
        for s in range(3)
    ] + [probes.knn_accuracy(train_x, shuffled, test_x, test_y, k=20)]
    assert 0.1 <= float(np.mean(accs)) <= 0.35, accs  # chance is 0.2


def test_knn_votes_are_weighted_by_exp_sim_over_T():
    """One neighbour at cosine 0.99 (class 0) against two at 0.9 (class 1), k=3:
    exp(0.99/0.07) > 2 exp(0.9/0.07), so a sharp T trusts the nearest; at T=1 the pair wins."""
    angles = torch.tensor([np.arccos(0.99), np.arccos(0.9), -np.arccos(0.9), np.pi])
    train_x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor(
        [[1.0], [3.0], [0.5], [2.0]]
    )
    train_y, test_x = torch.tensor([0, 1, 1, 0]), torch.tensor([[5.0, 0.0]])
    assert probes.knn_accuracy(train_x, train_y, test_x, torch.tensor([0]), k=3, T=0.07) == 1.0
    assert probes.knn_accuracy(train_x, train_y, test_x, torch.tensor([1]), k=3, T=1.0) == 1.0


@pytest.mark.parametrize("k,T,chunk", [(1, 0.07, 256), (5, 0.1, 3), (7, 0.5, 4), (100, 0.07, 5)])
def test_knn_matches_naive_loop(k, T, chunk):
    g = torch.Generator().manual_seed(k)
    train_x, train_y = torch.randn(40, 8, generator=g), torch.randint(0, 4, (40,), generator=g)
    test_x, test_y = torch.randn(23, 8, generator=g), torch.randint(0, 4, (23,), generator=g)
    got = probes.knn_accuracy(
        train_x, train_y, test_x, test_y, k=k, T=T, num_classes=4, chunk_size=chunk
    )
    assert got == naive_knn(train_x, train_y, test_x, test_y, min(k, 40), T, 4)


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_default_separates_and_applies_to_raw_features():
    x, y = clusters(40, 4, 64, seed=0, spread=0.8)
    test_x, test_y = clusters(20, 4, 64, seed=1, spread=0.8)
    x, test_x = (
        50.0 * x.relu() + 3.0,
        50.0 * test_x.relu() + 3.0,
    )  # raw-feature-like: non-negative, large, offset
    x[:, 0], test_x[:, 0] = 0.0, 5.0  # a unit that never fires in training but does at test time
    head = probes.train_linear(x, y, 4, epochs=30, batch_size=32)
    assert probes.top1(head, x, y) == 1.0 and probes.top1(head, test_x, test_y) >= 0.95
    assert torch.all(
        head.weight[:, 0] == 0
    )  # zero init, zero gradient: the dead unit cannot blow up


def test_load_linear_head_rejects_other_files(make_checkpoint, tmp_path):
    ckpt = make_checkpoint(tmp_path / "moco.pt")
    with pytest.raises(ValueError, match="not an nsneg linear head"):
        probes.load_linear_head(ckpt)
    bad = tmp_path / "bad.pt"
    torch.save(
        {
            "format": "nsneg-linear-head",
            "version": 1,
            "weight": torch.zeros(3, 4),
            "bias": torch.zeros(2),
            "classes": ["a", "b", "c"],
        },
        bad,
    )
    with pytest.raises(ValueError, match="do not fit together"):
        probes.load_linear_head(bad)
    with pytest.raises(FileNotFoundError):
        probes.load_linear_head(tmp_path / "nothing.pt")


def test_saved_head_round_trips_atomically(tmp_path):
    layer = torch.nn.Linear(4, 3)
    path = tmp_path / "heads" / "head.pt"
    probes.save_linear_head(path, layer, ["a", "b", "c"], "resnet18", 32, "ckpt.pt")
    head, info = probes.load_linear_head(path)
    assert torch.equal(head.weight, layer.weight) and torch.equal(head.bias, layer.bias)
    assert (info["classes"], info["arch"], info["image_size"], info["checkpoint"]) == (
        ["a", "b", "c"],
        "resnet18",
        32,
        "ckpt.pt",
    )
    assert [p.name for p in path.parent.iterdir()] == ["head.pt"]  # no temporary file left behind


def test_predict_is_the_argmax_of_the_head():
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        head.bias.zero_()
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0], [-1.0, -1.0]])
    assert probes.predict(head, x).tolist() == [0, 1, 2]
