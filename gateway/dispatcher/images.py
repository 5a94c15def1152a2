"""The answer's images: re-encoded in the format the client asked for, and a content hash of each.

The page gives PNG. JPEG and WebP are re-encoded with Pillow (off the event loop); PNG passes untouched, so a
client asking for nothing gets the page's own bytes. The hashes (sha256 of the bytes the client receives)
are kept in the task's row, so a client can check what it got.

An instance's image is decoded only as PNG, JPEG or WebP (what a page can give; Pillow tries no other decoder)
and only when its header declares at most MAX_PIXELS: anything else is `UnusableImage`, which the dispatcher
reports as the instance's bad answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

from PIL import Image

from gateway.image_types import sniff_image_type

DEFAULT_QUALITY = 90
_PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}
_DECODABLE = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
# 4096x4096 (AI Studio's largest, 4K) with room to spare; a header that declares more is refused unread.
MAX_PIXELS = 40_000_000


class UnusableImage(ValueError):
    """An instance's image the gateway will not decode: another format, too many pixels, or broken."""


async def encode_all(images_b64: list[str], output_format: str, quality: int | None) -> list[str]:
    if output_format not in _PILLOW_FORMATS or not images_b64:
        return images_b64
    return await asyncio.to_thread(lambda: [_reencode(image, output_format, quality) for image in images_b64])


def _reencode(image_b64: str, output_format: str, quality: int | None) -> str:
    with open_image(base64.b64decode(image_b64)) as picture:
        # JPEG has no alpha: transparent pixels go on white, as a viewer would show them.
        if output_format == "jpeg" and picture.mode in ("RGBA", "LA", "P"):
            rgba = picture.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            picture = flat
        elif picture.mode not in ("RGB", "RGBA", "L"):
            picture = picture.convert("RGBA")
        out = io.BytesIO()
        picture.save(out, format=_PILLOW_FORMATS[output_format], quality=quality or DEFAULT_QUALITY)
    return base64.b64encode(out.getvalue()).decode("ascii")


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image decoded, if its bytes are PNG, JPEG or WebP and its header declares at most `max_pixels`."""
    media_type = sniff_image_type(data)
    if media_type is None:
        raise UnusableImage("its image is not a PNG, JPEG or WebP image")
    try:
        picture = Image.open(io.BytesIO(data), formats=(_DECODABLE[media_type],))
        # The header's size, checked before any pixel is decoded: a small file may expand to gigabytes.
        width, height = picture.size
        if width * height > max_pixels:
            picture.close()
            raise UnusableImage(f"its image is {width}x{height} pixels, more than {max_pixels}")
        picture.load()
    except UnusableImage:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit (twice its default), met at open above ours
        raise UnusableImage(f"its image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated, a broken chunk, an unknown header
        raise UnusableImage(f"its image cannot be decoded: {str(exc)[:200] or type(exc).__name__}") from None
    return picture


def content_hashes(images_b64: list[str]) -> list[str]:
    return [hashlib.sha256(base64.b64decode(image)).hexdigest() for image in images_b64]
