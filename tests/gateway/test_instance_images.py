"""What the gateway decodes of an instance's images when a client asks for JPEG or WebP: PNG, JPEG and WebP only,
under a pixel cap. A fake instance (FakeRuntime) answers with another format or a decompression bomb; the task
fails as the instance's bad answer, with a message, and the gateway keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from gateway.dispatcher.images import MAX_PIXELS
from gateway.runtime.fake import FakeOutcome, FakeRuntime
from tests.gateway.pool import open_pool


def drawn(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of `width`x`height` black pixels: a few kB that decode to width*height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


BOMB_OVER_OUR_CAP = png_of_zeros(8000, 8000)  # 64 Mpx: Pillow's own limit (89 Mpx) would let it through
BOMB_OVER_PILLOWS = png_of_zeros(20000, 20000)  # 400 Mpx: Pillow raises its own error, which is no OSError

UNUSABLE = {
    "tiff": (drawn("TIFF"), "not a PNG, JPEG or WebP image"),
    "bmp": (drawn("BMP"), "not a PNG, JPEG or WebP image"),
    "gif": (drawn("GIF"), "not a PNG, JPEG or WebP image"),
    "bomb": (BOMB_OVER_OUR_CAP, f"8000x8000 pixels, more than {MAX_PIXELS}"),
    "huge bomb": (BOMB_OVER_PILLOWS, f"more than {MAX_PIXELS} pixels"),
    "broken png": (drawn("PNG")[:40], "cannot be decoded"),
}


@pytest.mark.parametrize("output_format", ["jpeg", "webp"])
async def test_an_image_not_png_jpeg_or_webp_or_too_large_is_the_instances_bad_answer(
    database_url: str, tmp_path: Path, fake: FakeRuntime, output_format: str
) -> None:
    assert 8000 * 8000 > MAX_PIXELS
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        (instance_id,) = pool.instance_ids
        for label, (image, message) in UNUSABLE.items():
            fake.script_generations(instance_id, FakeOutcome.ok(image=image))
            answer = await pool.generate(output_format=output_format)
            body = answer.json()
            assert answer.status_code < 500, (label, answer.status_code, answer.text[:300])
            assert body["success"] is False, label
            assert body["error_code"] == "instance_bad_answer", (label, body)
            assert message in body["error_message"], (label, body["error_message"])
        # What the page does give still converts, on the same gateway.
        for good in (drawn("PNG"), drawn("JPEG"), drawn("WEBP")):
            fake.script_generations(instance_id, FakeOutcome.ok(image=good))
            body = (await pool.generate(output_format=output_format)).json()
            assert body["success"] is True, body
            converted = base64.b64decode(body["generated_images"][0])
            assert converted.startswith(b"\xff\xd8\xff") if output_format == "jpeg" else converted[8:12] == b"WEBP"
