"""nsneg.trainer.analysis.categories: Geirhos et al.'s 16 categories and the fine groups against their sources."""

from nsneg.pipeline.sources import IMAGENET100
from nsneg.trainer.analysis import categories


def test_class_tables():
    assert len(categories.DOG_BREEDS) == len(set(categories.DOG_BREEDS)) == 118
    assert list(categories.DOG_BREEDS) == sorted(categories.DOG_BREEDS)
    assert (categories.DOG_BREEDS[0], categories.DOG_BREEDS[-1]) == ("n02085620", "n02113978")
    assert (
        categories.fine_group("n02099849") == "dog breeds"
        and categories.fine_group("n03594734") is None
    )
    cats = categories.GEIRHOS_CATEGORIES
    # Sizes of the <category>_indices lists of rgeirhos/texture-vs-shape code/helper/human_categories.py.
    sizes = {
        "airplane": 1,
        "bear": 4,
        "bicycle": 2,
        "bird": 49,
        "boat": 5,
        "bottle": 7,
        "car": 3,
        "cat": 6,
        "chair": 4,
        "clock": 3,
        "dog": 109,
        "elephant": 2,
        "keyboard": 2,
        "knife": 1,
        "oven": 1,
        "truck": 8,
    }
    assert {c: len(w) for c, w in cats.items()} == sizes
    every = [w for wnids in cats.values() for w in wnids]
    assert len(every) == len(set(every)) == 207
    # dog_indices are 152..268 less 192 204 227 242 251 258 260 264; breed i is ImageNet class 151 + i.
    dog_indices = [i for i in range(152, 269) if i not in (192, 204, 227, 242, 251, 258, 260, 264)]
    assert cats["dog"] == tuple(categories.DOG_BREEDS[i - 151] for i in dog_indices)
    assert (
        cats["airplane"] == ("n02690373",)
        and cats["oven"] == ("n04111531",)
        and cats["knife"] == ("n03041632",)
    )
    # The claim the command's warning rests on: an ImageNet-100 model covers 7 of the 16 categories.
    covered = categories.covered_categories(IMAGENET100, cats)
    assert sorted(covered) == ["bird", "cat", "chair", "dog", "keyboard", "oven", "truck"]
