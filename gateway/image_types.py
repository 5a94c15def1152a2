"""What kind of image some bytes are, read from their first bytes (magic numbers), never from a header a sender chose.

The formats an instance's page gives or its screenshots use: PNG, JPEG and WebP. Anything else is not an image
the gateway passes on or decodes.
"""

from __future__ import annotations

PNG, JPEG, WEBP = "image/png", "image/jpeg", "image/webp"
_MAGIC = ((b"\x89PNG\r\n\x1a\n", PNG), (b"\xff\xd8\xff", JPEG))


def sniff_image_type(data: bytes) -> str | None:
    """The media type of a PNG, JPEG or WebP image's bytes, or None when they are none of these."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return WEBP
    return None
