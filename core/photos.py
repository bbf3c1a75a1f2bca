"""Photo files to RGB pixels: decoding, and the ways apps resize a photo to the model's input.

The data stage decodes every photo with :func:`open_rgb` and resizes it with the
contract's resizer (:data:`CONTRACT_RESIZER`): that is what every exported file
is validated on. An app resizes with whatever its platform offers, and a model
can answer differently on those pixels; ``benchmarks.resizers`` measures each
file on the other resizers of :data:`RESIZERS`.

Every resizer takes the decoded RGB photo and returns ``uint8 (S, S, 3)``: an app
resizes a bitmap of bytes, and the full-integer files take bytes. A name ending in
``-squash`` resizes the whole frame to the square, changing its aspect ratio; the
others take the centred square first, as the contract does.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class BadImage(Exception):
    """An image file that cannot be used; ``reason`` is one phrase for the scan report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# 16-bit and 32-bit grey modes PIL's convert("RGB") would clip to white: scaled to 8 bits instead.
_WIDE_GREY = {"I;16": 257.0, "I;16B": 257.0, "I;16L": 257.0, "I;16N": 257.0, "I": 257.0}


def open_rgb(data: bytes, max_pixels: int) -> tuple[Image.Image, list[str]]:
    """The photo in ``data`` as a loaded RGB image, upright (EXIF), and what had to be converted on the way.

    Raises :class:`BadImage` with a reason for anything that is not a usable image.
    """
    conversions = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise BadImage(f"very large image ({width}x{height} = {width * height / 1e6:.1f} MP, over "
                                   f"data.max_image_pixels {max_pixels / 1e6:g} MP)")
                img.load()
                if img.getexif().get(0x0112, 1) not in (0, 1):  # EXIF orientation: the camera was turned
                    conversions.append("exif_rotated")
                img = ImageOps.exif_transpose(img)
                if img.mode in _WIDE_GREY:
                    conversions.append("16-bit")
                    grey = np.asarray(img, dtype=np.float64)
                    if img.mode == "I" and grey.max() <= 255:
                        conversions[-1] = "32-bit"
                        grey = grey * 257.0
                    img = Image.fromarray(np.clip(np.round(grey / _WIDE_GREY[img.mode]), 0, 255).astype(np.uint8), "L")
                if img.mode != "RGB":
                    conversions.append(img.mode)
                    img = img.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB
                img.load()
                return img, conversions
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"very large image, refused as a decompression bomb ({exc})") from None
    except Image.DecompressionBombWarning as exc:
        raise BadImage(f"very large image, refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage("not an image, or an image format PIL cannot read") from None
    except Exception as exc:  # truncated data, broken chunks, bad headers: the file's problem, named by kind
        message = str(exc).strip() or exc.__class__.__name__
        if "truncated" in message.lower():
            raise BadImage(f"truncated image ({message})") from None
        raise BadImage(f"corrupt image ({exc.__class__.__name__}: {message})") from None


# ---------------------------------------------------------------------------------------------
# Resizers


@dataclass(frozen=True)
class Method:
    """One way of resampling pixels, as a library offers it to an app."""

    name: str
    library: str  # "Pillow", "OpenCV", "TensorFlow": the package whose version is recorded beside results
    call: str  # the call, with S the model's input side
    who: str  # who resizes this way


METHODS = {m.name: m for m in (
    Method("pillow-bilinear", "Pillow", "ImageOps.fit(photo, (S, S), Image.BILINEAR)",
           "this pipeline's data stage (the contract); Pillow widens its bilinear kernel when reducing"),
    Method("pillow-box", "Pillow", "ImageOps.fit(photo, (S, S), Image.BOX)",
           "area averaging, as image.reduce() and thumbnail pipelines do"),
    Method("pillow-lanczos", "Pillow", "ImageOps.fit(photo, (S, S), Image.LANCZOS)",
           "antialiased resizing (Pillow's former Image.ANTIALIAS), as in iOS high-quality scaling"),
    Method("pillow-nearest", "Pillow", "ImageOps.fit(photo, (S, S), Image.NEAREST)",
           "nearest pixel, as Android's Bitmap.createScaledBitmap(..., filter=false)"),
    Method("opencv-linear", "OpenCV", "cv2.resize(square, (S, S), interpolation=cv2.INTER_LINEAR)",
           "OpenCV's default, bilinear from the 4 nearest pixels with no antialiasing when reducing (MediaPipe's "
           "CPU image-to-tensor warps with INTER_LINEAR too)"),
    Method("opencv-area", "OpenCV", "cv2.resize(square, (S, S), interpolation=cv2.INTER_AREA)",
           "OpenCV's recommended reduction: area averaging"),
    Method("tf-bilinear", "TensorFlow", "tf.image.resize(square, (S, S), 'bilinear', antialias=False)",
           "a TensorFlow input pipeline, e.g. tf.keras image_dataset_from_directory"),
    Method("tf-bilinear-antialias", "TensorFlow", "tf.image.resize(square, (S, S), 'bilinear', antialias=True)",
           "a TensorFlow input pipeline that antialiases when reducing"),
)}
SQUASH = "-squash"
# Every resizer's name: each method on the centred square, and on the whole frame squashed to a square.
RESIZER_NAMES = tuple(name + framing for framing in ("", SQUASH) for name in METHODS)
CONTRACT_RESIZER = "pillow-bilinear"
# What benchmark.resizers measures by default: the ways of resizing the issue asked about, and the whole frame.
DEFAULT_RESIZERS = ("pillow-bilinear", "pillow-box", "pillow-lanczos", "opencv-linear", "opencv-area", "tf-bilinear",
                    "tf-bilinear-antialias", "pillow-bilinear-squash", "opencv-linear-squash")

_PILLOW_FILTERS = {"pillow-bilinear": Image.BILINEAR, "pillow-box": Image.BOX, "pillow-lanczos": Image.LANCZOS,
                   "pillow-nearest": Image.NEAREST}


def split_name(name: str) -> tuple[Method, bool]:
    """(the method, whether the whole frame is squashed) of a resizer's name; an unknown name lists the known."""
    squash = name.endswith(SQUASH)
    method = METHODS.get(name[: -len(SQUASH)] if squash else name)
    if method is None:
        raise ValueError(f"unknown resizer {name!r}; resizers are {', '.join(RESIZER_NAMES)}")
    return method, squash


def library_version(library: str) -> str:
    """``"Pillow 12.3.0"``: the library and the version installed here."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"Pillow": "pillow", "OpenCV": "opencv-python-headless", "TensorFlow": "tensorflow"}[library]
    try:
        return f"{library} {version(package)}"
    except PackageNotFoundError:
        return f"{library} (not installed)"


def describe(name: str) -> dict:
    """A resizer as results.json and the preprocessing contract name it."""
    method, squash = split_name(name)
    # Squashing resizes the whole decoded frame: Pillow's resize, the others on the frame, not the square.
    call = (method.call.replace("ImageOps.fit(photo, (S, S), ", "photo.resize((S, S), ").replace("square", "frame")
            if squash else method.call)
    return {"name": name, "library": library_version(method.library), "call": call,
            "framing": "whole frame squashed to a square" if squash else "centred square", "who": method.who}


def centre_square(pixels: np.ndarray) -> np.ndarray:
    """The largest centred square of an ``(H, W, 3)`` array, on whole pixels as an app crops."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top:top + side, left:left + side]


def resize(photo: Image.Image, size: int, name: str = CONTRACT_RESIZER) -> np.ndarray:
    """``photo`` (RGB, from :func:`open_rgb`) as ``uint8 (size, size, 3)`` by the resizer ``name``."""
    method, squash = split_name(name)
    if method.library == "Pillow":
        pil_filter = _PILLOW_FILTERS[method.name]
        # ImageOps.fit crops the centred square on fractional coordinates and resamples it in one pass.
        out = (photo.resize((size, size), pil_filter) if squash
               else ImageOps.fit(photo, (size, size), method=pil_filter, centering=(0.5, 0.5)))
        return np.asarray(out, dtype=np.uint8)
    pixels = np.asarray(photo, dtype=np.uint8)
    if not squash:
        pixels = centre_square(pixels)
    if method.library == "OpenCV":
        import cv2

        interpolation = {"opencv-linear": cv2.INTER_LINEAR, "opencv-area": cv2.INTER_AREA}[method.name]
        return np.ascontiguousarray(cv2.resize(np.ascontiguousarray(pixels), (size, size),
                                               interpolation=interpolation), dtype=np.uint8)
    from core.keras_compat import tf

    resized = tf.image.resize(pixels[None].astype(np.float32), (size, size), method="bilinear",
                              antialias=method.name == "tf-bilinear-antialias")[0].numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)
