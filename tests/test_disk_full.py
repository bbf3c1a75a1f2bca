"""A full disk (issue 19): a write that fails with ENOSPC ends the run in one sentence, exit 1, and the
previous bundle stays whole; once there is space, the next run makes the same files.

Two ways to fill the disk: the file writer made to raise ENOSPC halfway through the int8 file (CI),
and a real 1-page-granular tmpfs a little larger than the build, mounted in a user namespace
(slow; skipped where ``unshare -rm`` is not allowed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_build
from tests.test_crash import artifact_digests, consistency_problems

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

# The CLI with Path.write_bytes failing as a full disk does: part of the data written, then ENOSPC.
FULL_WRITER = textwrap.dedent("""
    import errno, pathlib, sys
    write_bytes = pathlib.Path.write_bytes
    def full(self, data):
        if "int8" in self.name and self.suffix == ".tflite":
            write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)
    pathlib.Path.write_bytes = full
    from pipeline.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def _sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def test_a_full_disk_during_export_ends_in_one_sentence_and_keeps_the_previous_bundle(tiny_build, tmp_path):
    cfg, config = copy_build(tiny_build, tmp_path)
    root = cfg.build_root
    before = artifact_digests(root)
    full = subprocess.run([sys.executable, "-c", FULL_WRITER, "run", "--config", str(config), "--force", "export"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert full.returncode == 1, full.stdout[-2000:] + full.stderr[-2000:]
    sentence = _sentence(full.stderr)
    assert sentence.startswith("error: the disk is full: no space left to write '") and "tiny_int8.tflite" in sentence
    assert "(No space left on device); free space on that disk" in sentence
    assert "NOT MADE" not in full.stdout + full.stderr  # not blamed on the converter
    assert artifact_digests(root) == before
    assert consistency_problems(root)[1] == []
    assert not [p for p in (root / "export").rglob("*.tmp*")], "a partial file was left behind"
    # Space again: the next run makes the same files.
    again = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert artifact_digests(root) == before


# In a user and mount namespace: a tmpfs of SIZE_KB at MOUNT, the build copied in, a forced re-export
# that runs out of space, then the same with room to spare. Prints one JSON line per step.
REAL_DISK = textwrap.dedent("""
    set -u
    mount -t tmpfs -o size="$SIZE_KB"k tmpfs "$MOUNT" || exit 97
    cp -a "$SOURCE/." "$MOUNT/" || exit 98
    step() {
        "$PY" -c 'import json, sys; from tests.test_crash import artifact_digests, consistency_problems as c
    from pathlib import Path; root = Path(sys.argv[1]); b, p = c(root)
    print(json.dumps({"step": sys.argv[2], "code": int(sys.argv[3]), "bundle": b, "problems": p,
                      "digests": artifact_digests(root)}))' "$ROOT" "$1" "$2"
    }
    "$PY" -m pipeline run --config "$CONFIG" --force export > "$LOGS/full.out" 2> "$LOGS/full.err"
    step full $?
    mount -o remount,size=$((SIZE_KB * 4))k "$MOUNT" || exit 99
    "$PY" -m pipeline run --config "$CONFIG" > "$LOGS/roomy.out" 2> "$LOGS/roomy.err"
    step roomy $?
""")


def _can_mount_in_a_namespace() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def _kb(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


@pytest.mark.slow
def test_a_real_full_disk_during_export(tiny_build, tmp_path):
    if not _can_mount_in_a_namespace():
        pytest.skip("this machine does not allow a tmpfs in a user namespace (unshare -rm); "
                    "test_a_full_disk_during_export_* makes the writer raise instead")
    mount = tmp_path / "disk"
    mount.mkdir()
    cfg, config = copy_build(tiny_build, tmp_path / "source")
    before = artifact_digests(cfg.build_root)
    # The build as it is, and half the room its new bundle needs: the export runs out partway.
    size_kb = _kb(cfg.build_root) + _kb(cfg.build_root / "artifacts") // 2
    # The config that names the build folder on the small disk (same sections: the stamps hold).
    text = config.read_text().replace(str(tmp_path / "source" / "build"), str(mount))
    small = tmp_path / "small.yaml"
    small.write_text(text)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**ENV, "SIZE_KB": str(size_kb), "MOUNT": str(mount), "SOURCE": str(cfg.build_root.parent),
           "PY": sys.executable, "CONFIG": str(small), "ROOT": str(mount / cfg.name), "LOGS": str(logs)}
    run = subprocess.run(["unshare", "-rm", "bash", "-c", REAL_DISK], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    steps = {s["step"]: s for s in map(json.loads, run.stdout.splitlines())}
    full_err = (logs / "full.err").read_text()
    assert steps["full"]["code"] == 1, (logs / "full.out").read_text()[-2000:] + full_err[-2000:]
    assert _sentence(full_err).startswith("error: the disk is full: no space left to write ")
    assert steps["full"]["problems"] == [] and steps["full"]["digests"] == before
    assert steps["roomy"]["code"] == 0, (logs / "roomy.err").read_text()[-2000:]
    assert steps["roomy"]["digests"] == before and steps["roomy"]["problems"] == []
