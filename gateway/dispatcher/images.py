"""The answer's images: re-encoded in the format the client asked for, and a content hash of each.

The page gives PNG. JPEG and WebP are re-encoded with Pillow (off the event loop); PNG passes untouched, so a
client asking for nothing gets the page's own bytes. The hashes (sha256 of the bytes the client receives)
are kept in the task's row, so a client can check what it got.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

from PIL import Image

DEFAULT_QUALITY = 90
_PILLOW_FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


async def encode_all(images_b64: list[str], output_format: str, quality: int | None) -> list[str]:
    if output_format not in _PILLOW_FORMATS or not images_b64:
        return images_b64
    return await asyncio.to_thread(lambda: [_reencode(image, output_format, quality) for image in images_b64])


def _reencode(image_b64: str, output_format: str, quality: int | None) -> str:
    with Image.open(io.BytesIO(base64.b64decode(image_b64))) as picture:
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


def content_hashes(images_b64: list[str]) -> list[str]:
    return [hashlib.sha256(base64.b64decode(image)).hexdigest() for image in images_b64]
