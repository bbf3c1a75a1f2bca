"""The decoded splits as the data stage stores them: uncompressed ``.npz`` files of uint8 images and int64 labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_split(path: Path, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 images and int64 labels, as the data stage stored them.

    With ``mmap`` the images stay in the file (a read-only ``np.memmap``), so a split
    larger than memory can be fed from disk (:func:`make_dataset` streams it).
    """
    if mmap:
        images = _mapped_member(Path(path), "images")
        if images is not None:
            with np.load(path) as npz:
                return images, npz["labels"]
    with np.load(path) as npz:
        return npz["images"], npz["labels"]


def _mapped_member(path: Path, key: str) -> np.ndarray | None:
    """The array ``key`` of an uncompressed .npz mapped from the file, or None where it cannot be (compressed, empty)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        # The zip's local file header (30 bytes, then the name and an extra field) precedes the .npy bytes.
        fh.seek(info.header_offset)
        header = fh.read(30)
        if header[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        fh.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(fh)
        offset = fh.tell()
    if dtype.hasobject or 0 in shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
