"""Uploaded images for /v1/images/edits: decoded only after their header passed the size limit.

PIL reads the header (format, width, height) without decoding pixels, so a tiny file that claims a
huge canvas (a decompression bomb) is refused before any memory is spent on it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from .api import ApiError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def read_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    return _read(data, field, max_pixels).convert("RGB")


def read_mask(data: bytes, max_pixels: int) -> Image.Image:
    """OpenAI's mask convention: where the mask is transparent the image is edited. A mask without an alpha
    channel is read as greyscale, white = edit (ifengine's own convention). Returned as L, 255 = edit."""
    img = _read(data, "mask", max_pixels)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a < 128 else 0)
    return img.convert("L")


def _read(data: bytes, field: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ApiError(400, f"{field}: the upload is empty; send a PNG or JPEG file", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ApiError(
                    413 if w * h > 4 * max_pixels else 400,
                    f"{field}: {w}x{h} pixels is over the limit of {max_pixels} pixels",
                    field,
                )
            img.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, f"{field}: refused as a decompression bomb ({err})", field) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ApiError(
            400, f"{field}: not a readable image ({type(err).__name__}); send a PNG or JPEG file", field
        ) from None
    return img
