"""A full disk mid-run keeps the complete units intact, and a rerun finishes byte-identically.

The runs keep no rendered-token store (--no-store): the room left on the disk is counted in shard files.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from packsft.write.layout import ARRAY_FILES
from tests.helpers import assert_output_verifies, conv, error_line, write_conversations
from tests.helpers import cli_pack as pack
from tests.helpers import output_arrays as arrays

PAGE = 4096


def _full_disk_data(folder: Path) -> Path:
    for index in range(3):
        records = [conv(("user", f"Question {index} {i}? " * 5), ("assistant", f"Answer {i} " * 40)) for i in range(60)]
        write_conversations(folder / f"f{index}.parquet", records)
    return folder


def _pages(path: Path) -> int:
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in path.rglob("*") if p.is_file())


def _assert_first_unit_intact(out: Path, reference: Path, message: str) -> None:
    # numpy reports a short write on a full tmpfs as "N requested and M written", without ENOSPC.
    assert message.startswith(f"Error: {out / 'shards' / '00001'}: cannot write shard (")
    assert message.endswith("); check free space and permissions")
    assert not (out / "dataset.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith(".")) == ["00000"]
    first = {k: v for k, v in arrays(out).items() if k.startswith("00000/")}
    assert first == {k: v for k, v in arrays(reference).items() if k.startswith("00000/")}


@pytest.fixture
def full_disk_reference(tmp_path, demo_tokenizer_dir) -> tuple[Path, Path]:
    data = _full_disk_data(tmp_path / "data")
    reference = tmp_path / "reference"
    assert pack(data, reference, demo_tokenizer_dir, "--seq-length", "256", "--no-store").exit_code == 0
    return data, reference


def test_full_tmpfs_keeps_complete_units_and_a_rerun_finishes_identically(tmp_path, demo_tokenizer_dir,
                                                                          full_disk_reference):
    data, reference = full_disk_reference
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC test covers the rest)")
    mount = tmp_path / "mnt"
    mount.mkdir()
    # Room for the marker, plan.json and the first shard, and half the tokens of the second.
    room = _pages(reference) - _pages(reference / "shards") + _pages(reference / "shards" / "00000") - PAGE
    room += _pages(reference / "shards" / "00001" / "tokens.npy") // 2
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = mount / "out"
        _assert_first_unit_intact(out, reference, error_line(pack(data, out, demo_tokenizer_dir, "--seq-length", "256", "--no-store")))
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)  # space freed
        assert pack(data, out, demo_tokenizer_dir, "--seq-length", "256", "--no-store").exit_code == 0
        assert arrays(out) == arrays(reference)
        assert_output_verifies(out)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_injected_enospc_keeps_complete_units_and_a_rerun_finishes_identically(tmp_path, demo_tokenizer_dir,
                                                                               full_disk_reference, monkeypatch):
    data, reference = full_disk_reference
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        import numpy as np

        save, write_text, saved = np.save, Path.write_text, []

        def save_until_full(handle, array, **kwargs):
            saved.append(1)
            if len(saved) > len(ARRAY_FILES):  # the second unit's first array
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return save(handle, array, **kwargs)

        def no_room_for_notes(path, *args, **kwargs):
            if path.name.startswith(".failed-"):  # the disk is so full not even the failure note fits
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write_text(path, *args, **kwargs)

        patch.setattr("packsft.write.writer.np.save", save_until_full)
        patch.setattr(Path, "write_text", no_room_for_notes)
        _assert_first_unit_intact(out, reference, error_line(pack(data, out, demo_tokenizer_dir, "--seq-length", "256", "--no-store")))
    assert pack(data, out, demo_tokenizer_dir, "--seq-length", "256", "--no-store").exit_code == 0
    assert arrays(out) == arrays(reference)
