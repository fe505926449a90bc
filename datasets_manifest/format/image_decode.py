"""Decoding an image file safely to upright RGB: the one decode path of the source images the
pipeline reads and the ``source.img`` members readers check.

Every way a real image collection goes wrong ends here as either a correct conversion
(CMYK, grayscale, palette, 16-bit, EXIF orientation) or a ``BadImage`` with a reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nsneg.datasets_manifest.format.constants import MAX_PIXELS


class BadImage(Exception):
    """An image that cannot be turned into crops; ``reason`` is what the manifest lists."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _to_rgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        conversions.append(f"{mode}->rgb")
        return Image.fromarray(np.stack([arr8] * 3, axis=-1), mode="RGB")
    if mode == "F":
        raise BadImage("float image mode 'F' has no defined colour range")
    if mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        # Transparent pixels become white, as browsers show them, rather than black garbage.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        conversions.append(f"{mode}->rgb")
        return Image.alpha_composite(background, rgba).convert("RGB")
    conversions.append(f"{mode.lower()}->rgb")
    return img.convert("RGB")


def decode_rgb(data: bytes) -> tuple[Image.Image, list[str], str | None]:
    """Bytes -> (upright RGB PIL image, conversions made, file format), or ``BadImage``."""
    conversions: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(
                    f"decompression bomb: {img.width}x{img.height} exceeds {MAX_PIXELS} pixels"
                )
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(f"decompression bomb: {e}") from None
        except BadImage:
            raise
        except UnidentifiedImageError:
            raise BadImage("unreadable image (not a recognised image format)") from None
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
            raise BadImage(f"unreadable image ({type(e).__name__}: {e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    source_format = img.format
    orientation = _exif_orientation(img)
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        conversions.append(f"exif-orientation-{orientation}")
    return _to_rgb(img, conversions), conversions, source_format


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:
        return None
