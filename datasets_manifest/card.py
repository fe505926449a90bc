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

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import ManifestError, load_manifest

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


def _load_section(manifest: dict[str, Any], name: str, version: str) -> str:
    """How to load the set, for where it was published (``base_url``): the Hub or any other url."""
    base = manifest.get("base_url")
    first = next(iter(manifest["splits"]), "train")
    if base and base.startswith("hf://datasets/"):
        repo = base[len("hf://datasets/") :]
        where = f'load_dataset("{repo}")                  # or a local copy of this folder'
    else:
        where = 'load_dataset("DIR")                      # DIR: a copy of this folder'
    lines = [
        "```python",
        "from datasets import load_dataset",
        f"ds = {where}",
        f'import ray.data; ray.data.read_webdataset("DIR/{first}/")   # or webdataset / tar on {first}/*.tar',
        "```",
        "",
    ]
    if base:
        lines += [
            "With nsneg (every shard verified, this card copied):",
            "",
            "```bash",
            f"nsneg-data fetch {base} --to DIR",
            f"nsneg-data fetch {name}@{version} --manifest-dir {base} --to DIR   # by name",
            "```",
        ]
    return "\n".join(lines)


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

{_load_section(manifest, name, version)}

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


def write_card(root: Path, name: str, version: str, manifest: dict[str, Any] | None = None) -> Path:
    """Write ``root/README.md`` for the set in ``root`` (from ``manifest``, default its own); a
    README that nsneg did not write is never replaced."""
    path = Path(root) / CARD_NAME
    if path.exists() and MARKER not in path.read_text(errors="replace"):
        raise ManifestError(
            f"{path} exists and was not written by nsneg-data publish; move it "
            "away (the dataset card takes its place)"
        )
    manifest = manifest if manifest is not None else load_manifest(root)
    files.atomic_write_text(path, render(manifest, name, version))
    return path
