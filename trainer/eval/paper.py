"""The paper's Table 1 numbers (Ge et al. 2021), shown beside a user's runs by ``nsneg-eval
table`` as reference rows of their own (another protocol: never on the user's axes)."""

from __future__ import annotations

from typing import Any

#: Ge et al. 2021 (NeurIPS), top-1 % mean ± std over 3 seeds, ResNet-50, 200 epochs on
#: ImageNet-100, linear probe 60 epochs. Source: the official repository's README,
#: github.com/SongweiGe/Contrastive-Learning-with-Non-Semantic-Negatives (commit 5fbdc4d8),
#: "Pre-trained Models" table, rows with k = 16384 (its linear-evaluation section names these
#: models as those "reported in Table 1"). The README's columns: ImageNet100, Corruption
#: (ImageNet-C top-1), Sketch, Stylized, Rendition. Its k = 8192 and IFM-hyperparameter rows
#: are other settings and are not listed here.
PAPER_SOURCE = (
    "Ge et al. 2021, Table 1 models as listed in github.com/SongweiGe/"
    "Contrastive-Learning-with-Non-Semantic-Negatives README (commit 5fbdc4d8), k = 16384, "
    "ResNet-50, 200 epochs, mean ± std over 3 seeds"
)
PAPER_ROWS: list[dict[str, Any]] = [
    {
        "label": "MoCo v2",
        "values": {
            "in100": (77.88, 0.28),
            "imagenet_c": (43.08, 0.27),
            "sketch": (28.24, 0.58),
            "stylized": (16.20, 0.55),
            "rendition": (32.92, 0.12),
        },
    },
    {
        "label": "+Texture, α = 2",
        "values": {
            "in100": (77.76, 0.17),
            "imagenet_c": (43.58, 0.33),
            "sketch": (29.11, 0.39),
            "stylized": (16.59, 0.17),
            "rendition": (33.36, 0.15),
        },
    },
    {
        "label": "+Patch, α = 2",
        "values": {
            "in100": (79.35, 0.12),
            "imagenet_c": (45.13, 0.35),
            "sketch": (31.76, 0.88),
            "stylized": (17.37, 0.19),
            "rendition": (34.78, 0.15),
        },
    },
    {
        "label": "+Patch, α = 3",
        "values": {
            "in100": (75.58, 0.52),
            "imagenet_c": (44.45, 0.15),
            "sketch": (34.03, 0.58),
            "stylized": (18.60, 0.26),
            "rendition": (36.89, 0.11),
        },
    },
]
