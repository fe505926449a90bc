"""Data and direct computations shared by the analysis tests: six classes of bundled photos
(two dog breeds, a cat, a keyboard, jean, window screen) and the one-image-at-a-time reference path."""

from pathlib import Path

import torch
from PIL import Image, ImageOps

from nsneg_testing import encode, photo
from nsneg.trainer.eval import features

CLASSES = {
    "n02085620": "astronaut.png",
    "n02099849": "coffee.png",
    "n02123045": "chelsea.png",
    "n03085013": "motorcycle_left.png",
    "n03594734": "rocket.jpg",
    "n04589890": "brick.png",
}
SIZE = (
    64  # the released format records no image size (224 then); tests use small crops to stay fast
)


def photo_variant(name: str, i: int) -> Image.Image:
    img = photo(name, (112 + 8 * i, 100 + 4 * i))
    return ImageOps.mirror(img) if i % 2 else img


def write_tree(root: Path, per_class: int, offset: int = 0, classes=CLASSES) -> Path:
    for wnid, name in classes.items():
        (root / wnid).mkdir(parents=True)
        for i in range(per_class):
            (root / wnid / f"{wnid}_{i}.png").write_bytes(encode(photo_variant(name, i + offset)))
    return root


@torch.no_grad()
def direct_predictions(network, head_layer, images, size):
    """One image at a time: eval view -> network -> head -> softmax probabilities."""
    transform = features.eval_transform(size)
    return [
        head_layer(network.eval()(transform(im.convert("RGB"))[None])).softmax(dim=1)[0]
        for im in images
    ]


def direct_counts(network, head_layer, pairs, size, num_classes):
    correct, total = [0] * num_classes, [0] * num_classes
    probabilities = direct_predictions(network, head_layer, [im for im, _ in pairs], size)
    for probs, cls in zip(probabilities, [c for _, c in pairs]):
        total[cls] += 1
        correct[cls] += int(int(probs.argmax()) == cls)
    return correct, total
