"""Reference images are decoded and re-encoded before the browser sees them: what cannot be decoded, or
would decode to too many pixels, is refused; the rest reaches the page as fresh PNG (or JPEG) bytes."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import zlib

import pytest
from PIL import Image

from instance.errors import BadInput
from instance.images import decode_reference, reencode, reference_files
from tests.instance.conftest import sim
from tests.instance.harness import b64, png_bytes

MAX_PIXELS = 40_000_000  # the instance's default


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def bomb_png(width: int = 8000, height: int = 8000) -> bytes:
    """A valid greyscale PNG of width x height zeros: a few hundred KB that decode to width*height bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("P", (40, 30), i * 40) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def cmyk_jpeg() -> bytes:
    return _encoded(Image.new("CMYK", (48, 32), (0, 200, 200, 0)), "JPEG")


def _decoded(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


REFUSED = [
    ("bomb", lambda: bomb_png(), "more than 40000000"),
    ("truncated", lambda: png_bytes(300, 200, (9, 9, 9))[:120], "could not be decoded"),
    # Seeded: some random tails parse as a chunk and fail later, with the other (also correct) message.
    ("png_header_garbage", lambda: b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(4000), "not a readable"),
    ("truncated_jpeg", lambda: _encoded(Image.effect_noise((400, 300), 50), "JPEG")[:2000], "could not be decoded"),
]


# ---- the decoder alone -----------------------------------------------------------------------------


def test_reference_files_are_private_and_removed_when_the_task_ends():
    images = [reencode(png_bytes(20, 10), 0, MAX_PIXELS), reencode(png_bytes(10, 20, (0, 0, 255)), 1, MAX_PIXELS)]
    with reference_files(images) as paths:
        assert [p.name for p in paths] == ["reference-1.png", "reference-2.png"]
        assert [p.read_bytes() for p in paths] == [image.data for image in images]
        assert paths[0].parent.stat().st_mode & 0o777 == 0o700  # other users of the host read nothing
        folder = paths[0].parent
    assert not folder.exists()
    with pytest.raises(RuntimeError), reference_files(images) as paths:
        raise RuntimeError("the task failed")  # a failed task leaves nothing behind either
    assert not paths[0].parent.exists()
    with reference_files([]) as none:
        assert none == []


@pytest.mark.parametrize(("name", "make", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_undecodable_or_oversized_references_are_bad_input(name, make, says):
    with pytest.raises(BadInput) as refused:
        decode_reference(b64(make()), 0, 8 * 1024 * 1024, MAX_PIXELS)
    assert refused.value.status_code == 422
    assert says in refused.value.message and "#1" in refused.value.message


def test_the_pixel_limit_is_the_callers():
    image = b64(png_bytes(64, 48))
    assert decode_reference(image, 0, 1 << 20, 64 * 48).mime == "image/png"
    with pytest.raises(BadInput, match="64x48 pixels"):
        decode_reference(image, 0, 1 << 20, 64 * 48 - 1)


def test_odd_images_are_converted():
    gif = decode_reference(b64(animated_gif()), 0, 1 << 20, MAX_PIXELS)
    assert (gif.mime, gif.name) == ("image/png", "reference-1.png")
    assert _decoded(gif.data).size == (40, 30) and not getattr(_decoded(gif.data), "is_animated", False)
    jpeg = decode_reference(b64(cmyk_jpeg()), 1, 1 << 20, MAX_PIXELS)
    assert (jpeg.mime, jpeg.name) == ("image/jpeg", "reference-2.jpg")
    assert _decoded(jpeg.data).mode == "RGB"
    deep = decode_reference(b64(_encoded(Image.new("I;16", (20, 10), 40000), "PNG")), 0, 1 << 20, MAX_PIXELS)
    assert _decoded(deep.data).mode in ("RGB", "L")
    webp = decode_reference(b64(_encoded(Image.new("RGBA", (20, 10), (1, 2, 3, 100)), "WEBP")), 0, 1 << 20, MAX_PIXELS)
    assert webp.mime == "image/png" and _decoded(webp.data).mode == "RGBA"


def test_metadata_is_dropped_and_orientation_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "SecretCam"  # camera maker: metadata a caller may not mean to pass on
    source = _encoded(Image.new("RGB", (60, 20), (200, 10, 10)), "JPEG", exif=exif.tobytes())
    out = decode_reference(b64(source), 0, 1 << 20, MAX_PIXELS)
    assert _decoded(out.data).size == (20, 60)
    assert b"SecretCam" not in out.data


# ---- through a running instance --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "make", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_the_instance_refuses_them_before_the_browser(inst, simulator_url, name, make, says):
    before = inst.status()["counters"]
    answer = inst.generate("x", reference_images_b64=[b64(png_bytes()), b64(make())])
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"] and "#2" in answer.json()["detail"]
    assert answer.json()["error"]["code"] == "bad_input"
    assert sim(simulator_url, "/_sim/record")["generations"] == []
    assert inst.status()["counters"] == before


def test_the_page_gets_the_reencoded_bytes(inst, simulator_url):
    sources = [animated_gif(), cmyk_jpeg()]
    answer = inst.generate("odd references", reference_images_b64=[b64(s) for s in sources]).json()
    assert answer["success"], answer
    uploads = sim(simulator_url, "/_sim/record")["generations"][0]["uploads"]
    assert [u["mime"] for u in uploads] == ["image/png", "image/jpeg"]
    expected = [hashlib.sha256(reencode(s, i, MAX_PIXELS).data).hexdigest() for i, s in enumerate(sources)]
    assert [u["sha256"] for u in uploads] == expected
    assert all(u["sha256"] != hashlib.sha256(s).hexdigest() for u, s in zip(uploads, sources, strict=True))


def test_a_data_url_reference_is_reencoded_too(inst, simulator_url):
    source = png_bytes(30, 20, (5, 6, 7))
    answer = inst.generate("data url", reference_images_b64=["data:image/png;base64," + base64.b64encode(source).decode()])
    assert answer.json()["success"], answer.text
    upload = sim(simulator_url, "/_sim/record")["generations"][0]["uploads"][0]
    assert upload["sha256"] == hashlib.sha256(reencode(source, 0, MAX_PIXELS).data).hexdigest()
