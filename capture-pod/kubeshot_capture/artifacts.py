"""Encoding and verification of artifacts: nothing is returned that does not decode."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from kubeshot.api import CaptureError, FailureReason, Format

_PIL_FORMATS = {Format.PNG: "PNG", Format.JPEG: "JPEG", Format.WEBP: "WEBP"}
DEFAULT_WEBP_QUALITY = 80


@dataclass(frozen=True)
class Verified:
    """What decoding an artifact showed."""

    content_type: str
    sha256: str
    width: int | None
    height: int | None
    pages: int | None


def png_to_webp(png: bytes, quality: int | None) -> bytes:
    """Re-encode a PNG screenshot as WebP (Chromium's screenshot API has no WebP output)."""
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        out = io.BytesIO()
        image.save(out, format="WEBP", quality=quality or DEFAULT_WEBP_QUALITY, method=4)
        return out.getvalue()


def verify(data: bytes, fmt: Format) -> Verified:
    """Decode the artifact as the format it claims; CaptureError(Internal) when it does not."""
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise _invalid(fmt, "empty output")
    if fmt in _PIL_FORMATS:
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != _PIL_FORMATS[fmt]:
                    raise _invalid(fmt, f"decoded as {image.format}")
                image.load()  # decodes every pixel: truncation shows here
                width, height = image.size
        except (OSError, SyntaxError, ValueError) as exc:
            raise _invalid(fmt, str(exc)) from exc
        return Verified(fmt.content_type, digest, width, height, None)
    if fmt is Format.PDF:
        if not data.startswith(b"%PDF-"):
            raise _invalid(fmt, "no PDF header")
        # Imported for PDFs only: pypdf costs the other captures (and a capture pod's cold start)
        # ~0.05 s of imports.
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError

        try:
            reader = PdfReader(io.BytesIO(data), strict=True)
            pages = len(reader.pages)
            box = reader.pages[0].mediabox
        except (PyPdfError, ValueError, IndexError, KeyError) as exc:
            raise _invalid(fmt, str(exc)) from exc
        return Verified(fmt.content_type, digest, round(box.width), round(box.height), pages)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(fmt, "not UTF-8") from exc
    return Verified(fmt.content_type, digest, None, None, None)


def _invalid(fmt: Format, why: str) -> CaptureError:
    return CaptureError(FailureReason.INTERNAL, f"{fmt.value} output did not verify: {why}")
