"""Copy N photos per class of a real dataset and salt the copy with one file of every bad kind.

    .venv/bin/python -m tests.salted_copy ../shared/datasets/flowers_128 /tmp/salted/flowers_salted 40

Writes the copy, and beside it ``unusable.json``: the files the data stage must skip, each
with a word its reason must contain (what ``tests.conftest.salt_folder`` returns, with its
apple/leaf/sky folders mapped onto the first three classes of the copy).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import salt_folder


def salted_copy(source: Path, target: Path, per_class: int) -> dict[str, str]:
    shutil.rmtree(target, ignore_errors=True)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in classes:
        (target / name).mkdir(parents=True)
        for photo in sorted((source / name).iterdir())[:per_class]:
            shutil.copyfile(photo, target / name / photo.name)
    stand_in = dict(zip(("apple", "leaf", "sky"), classes[:3]))
    # The files salt_folder expects to find, made from real photos of the stand-in classes.
    Image.open(sorted((target / stand_in["apple"]).iterdir())[0]).save(target / stand_in["apple"] / "img_00.png")
    Image.open(sorted((target / stand_in["sky"]).iterdir())[0]).save(target / stand_in["sky"] / "img_03.bmp")
    for fake, real in stand_in.items():
        (target / fake).symlink_to(target / real, target_is_directory=True)
    unusable = salt_folder(target, target.parent / "outside")
    (target / "sky" / "notes.txt").write_text("a note left in the folder")  # salt_folder counts on one
    for fake, real in stand_in.items():
        (target / fake).unlink()
        for link in (target / real).iterdir():  # links made through the stand-in name: point them at the real one
            if link.is_symlink() and f"/{fake}/" in str(link.readlink()):
                fixed = Path(str(link.readlink()).replace(f"/{fake}/", f"/{real}/"))
                link.unlink()
                link.symlink_to(fixed)
    mapped = {}
    for rel, word in unusable.items():
        top, _, rest = rel.partition("/")
        mapped[f"{stand_in.get(top, top)}/{rest}" if rest else rel] = word
    return mapped


if __name__ == "__main__":
    source, target, per_class = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    unusable = salted_copy(source, target, per_class)
    (target.parent / "unusable.json").write_text(json.dumps(unusable, indent=1, ensure_ascii=False) + "\n")
    print(f"{target}: {per_class} photos per class, {len(unusable)} unusable files salted in")
