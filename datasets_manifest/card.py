"""The dataset card (``README.md``) that makes a shard set's folder a Hugging Face dataset as it is.

Its YAML header names every split's files (``configs`` / ``data_files``), so
``load_dataset(folder)`` -- or ``load_dataset("org/name")`` once the folder is uploaded to
the Hub -- reads exactly the manifest's splits with the webdataset loader, and the Hub's
viewer shows them. The body says what the set is, where its pixels come from (ImageNet's
terms), how it was generated and how to cite it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nsneg.pipeline import contract, files

CARD_NAME = "README.md"
#: The line that marks a card as written by nsneg: only such a card is ever replaced.
MARKER = "<!-- written by `nsneg-data publish`; rewritten on every publish -->"

CITATION = """@inproceedings{ge2021robust,
  title     = {Robust Contrastive Learning Using Negative Samples with Diminished Semantics},
  author    = {Ge, Songwei and Mishra, Shlok and Li, Chun-Liang and Wang, Haohan and Jacobs, David},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}"""

IMAGENET_NOTE = (
    "The textures are synthesised from ImageNet images, whose use is governed by the "
    "[ImageNet terms of access](https://image-net.org/download.php) (non-commercial research and "
    "education only). Use this set under the same terms."
)


def _yaml_header(name: str, manifest: dict[str, Any]) -> str:
    """JSON strings are YAML strings: every value is written with ``json.dumps``, so nothing needs escaping."""
    lines = [
        "---",
        "license: other",
        f"license_name: {json.dumps('imagenet-derived')}",
        f"pretty_name: {json.dumps(name)}",
        "task_categories:",
        "- image-classification",
        "tags:",
        "- webdataset",
        "- texture",
        "- nsneg",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in manifest["splits"]:
        lines += [f"  - split: {json.dumps(split)}", f"    path: {json.dumps(f'{split}/*.tar')}"]
    return "\n".join(lines + ["---"])


def render(manifest: dict[str, Any], name: str, version: str) -> str:
    splits = manifest["splits"]
    rows = "\n".join(
        f"| {s} | {i['samples']} | {len(i['shards'])} | {i['bytes']} |" for s, i in splits.items()
    )
    source = (
        "**This set carries ImageNet pixels** (`source.img`): redistributing them is not allowed by "
        "ImageNet's terms."
        if manifest["has_source"]
        else "No ImageNet pixels: pair it with a local ImageNet copy (`nsneg-textures pair`) to train."
    )
    fields = ", ".join(f"`{f}`" for f in manifest["fields"])
    first = next(iter(splits), "train")
    return f"""{_yaml_header(f"{name} {version}", manifest)}
{MARKER}

# {name} (version {version})

ImageNet-Texture shards made by nsneg for *Robust Contrastive Learning Using
Negative Samples with Diminished Semantics* (Ge et al., NeurIPS 2021): one 224 px texture per image,
synthesised from two 96 px crops, as non-semantic negatives. Format `{manifest["format"]}` version
{manifest["format_version"]} (`manifest.json` lists every shard's sha256).

| split | samples | shards | bytes |
| --- | --- | --- | --- |
{rows}

Members of every sample: {fields}. {source}

## Load

```python
from datasets import load_dataset
ds = load_dataset("ORG/{name}")                         # or a local copy of this folder
import ray.data; ray.data.read_webdataset("{first}/")   # or webdataset / plain tar on {first}/*.tar
```

With nsneg: `nsneg-data fetch hf://datasets/ORG/{name} --to DIR` (every shard verified).

## License

{IMAGENET_NOTE}

## Generator settings

```json
{json.dumps(manifest["generator"], indent=2, sort_keys=True)}
```

## Citation

```bibtex
{CITATION}
```
"""


def write_card(root: Path, name: str, version: str) -> Path:
    """Write ``root/README.md`` for the set in ``root``; a README that nsneg did not write is never replaced."""
    path = Path(root) / CARD_NAME
    if path.exists() and MARKER not in path.read_text(errors="replace"):
        raise contract.ManifestError(
            f"{path} exists and was not written by nsneg-data publish; move it "
            "away (the dataset card takes its place)"
        )
    files.atomic_write_text(path, render(contract.load_manifest(root), name, version))
    return path
