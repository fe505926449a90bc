"""The class tables the analyses need: Geirhos et al.'s 16 categories as ImageNet wnids, and the
fine-grained groups (the ImageNet dog breeds) that ``texture-classes`` compares with the rest."""

from __future__ import annotations

from collections.abc import Sequence

#: WordNet ``dog, domestic dog, Canis familiaris``. Its hyponyms among the ImageNet-1k classes are
#: the 118 breeds n02085620 (Chihuahua) .. n02113978 (Mexican hairless): classes 151-268, a
#: contiguous range of the standard sorted wnid order (269, n02114367, is the timber wolf).
DOG_SYNSET = "n02084071"
DOG_BREEDS: tuple[str, ...] = tuple(
    """
n02085620 n02085782 n02085936 n02086079 n02086240 n02086646 n02086910 n02087046 n02087394 n02088094
n02088238 n02088364 n02088466 n02088632 n02089078 n02089867 n02089973 n02090379 n02090622 n02090721
n02091032 n02091134 n02091244 n02091467 n02091635 n02091831 n02092002 n02092339 n02093256 n02093428
n02093647 n02093754 n02093859 n02093991 n02094114 n02094258 n02094433 n02095314 n02095570 n02095889
n02096051 n02096177 n02096294 n02096437 n02096585 n02097047 n02097130 n02097209 n02097298 n02097474
n02097658 n02098105 n02098286 n02098413 n02099267 n02099429 n02099601 n02099712 n02099849 n02100236
n02100583 n02100735 n02100877 n02101006 n02101388 n02101556 n02102040 n02102177 n02102318 n02102480
n02102973 n02104029 n02104365 n02105056 n02105162 n02105251 n02105412 n02105505 n02105641 n02105855
n02106030 n02106166 n02106382 n02106550 n02106662 n02107142 n02107312 n02107574 n02107683 n02107908
n02108000 n02108089 n02108422 n02108551 n02108915 n02109047 n02109525 n02109961 n02110063 n02110185
n02110341 n02110627 n02110806 n02110958 n02111129 n02111277 n02111500 n02111889 n02112018 n02112137
n02112350 n02112706 n02113023 n02113186 n02113624 n02113712 n02113799 n02113978
""".split()
)

#: Fine-grained groups: name -> (WordNet ancestor, its ImageNet-1k member classes). Only what
#: the WordNet hierarchy makes unambiguous is listed; every other class counts as "rest".
FINE_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {"dog breeds": (DOG_SYNSET, DOG_BREEDS)}

#: The 16 entry-level categories of Geirhos et al. (ICLR 2019) -> the ImageNet-1k wnids whose
#: probabilities their decision code averages. Source: the ``<category>_indices`` lists of
#: rgeirhos/texture-vs-shape ``code/helper/human_categories.py``, used by
#: ``code/probabilities_to_decision.py`` (``ImageNetProbabilitiesTo16ClassesMapping``, np.mean);
#: identical in bethgelab/model-vs-human ``modelvshuman/helper/human_categories.py``. The indices
#: are written here as wnids of the standard sorted ILSVRC-2012 order. (Those files also hold
#: broader ``<category>`` wnid lists with synsets outside ILSVRC-2012; decisions use the indices.)
GEIRHOS_CATEGORIES: dict[str, tuple[str, ...]] = {
    name: tuple(wnids.split())
    for name, wnids in {
        "airplane": "n02690373",
        "bear": "n02132136 n02133161 n02134084 n02134418",
        "bicycle": "n02835271 n03792782",
        "bird": """n01514859 n01530575 n01531178 n01532829 n01534433 n01537544 n01558993 n01560419 n01582220
               n01592084 n01601694 n01614925 n01616318 n01622779 n01795545 n01796340 n01797886 n01798484
               n01817953 n01818515 n01819313 n01820546 n01824575 n01828970 n01829413 n01833805 n01843065
               n01843383 n01855032 n01855672 n01860187 n02002556 n02002724 n02006656 n02007558 n02009229
               n02009912 n02011460 n02013706 n02017213 n02018207 n02018795 n02025239 n02027492 n02028035
               n02033041 n02037110 n02051845 n02056570""",
        "boat": "n02951358 n03344393 n03662601 n04273569 n04612504",
        "bottle": "n02823428 n03937543 n03983396 n04557648 n04560804 n04579145 n04591713",
        "car": "n02814533 n03100240 n04285008",
        "cat": "n02123045 n02123159 n02123394 n02123597 n02124075 n02125311",
        "chair": "n02791124 n03376595 n04099969 n04429376",
        "clock": "n02708093 n03196217 n04548280",
        # The 118 breeds without indices 151 (Chihuahua), 192, 204, 227, 242, 251, 258, 260, 264 (as in the source).
        "dog": " ".join(
            w
            for i, w in enumerate(DOG_BREEDS, start=151)
            if i not in (151, 192, 204, 227, 242, 251, 258, 260, 264)
        ),
        "elephant": "n02504013 n02504458",
        "keyboard": "n03085013 n04505470",
        "knife": "n03041632",
        "oven": "n04111531",
        "truck": "n03345487 n03417042 n03770679 n03796401 n03930630 n03977966 n04461696 n04467665",
    }.items()
}


def fine_group(wnid: str) -> str | None:
    """The fine-grained group (``FINE_GROUPS``) a class belongs to, or None."""
    return next((name for name, (_, members) in FINE_GROUPS.items() if wnid in members), None)


def covered_categories(
    head_classes: Sequence[str], categories: dict[str, Sequence[str]]
) -> dict[str, list[int]]:
    """Category -> the head's class indices that belong to it, for the categories the head covers."""
    index = {wnid: i for i, wnid in enumerate(head_classes)}
    covered = {name: [index[w] for w in wnids if w in index] for name, wnids in categories.items()}
    return {name: idx for name, idx in covered.items() if idx}
