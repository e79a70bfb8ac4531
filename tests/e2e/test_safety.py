"""Safe by default: no pickle, no remote code unless asked, no writes outside OUT_DIR, clean failures."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from click.testing import CliRunner

from packsft.cli import main
from packsft.verify import verify_output
from tests.helpers import assert_output_verifies, conv, write_conversations

PACKAGE = Path(__file__).resolve().parents[2] / "packsft"
RECORDS = [conv(("user", f"Question {i}?"), ("assistant", f"Answer number {i}. " * (i % 5 + 1))) for i in range(12)]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    write_conversations(tmp_path / "data" / "x.parquet", RECORDS[:7])
    write_conversations(tmp_path / "data" / "y.parquet", RECORDS[7:])
    return tmp_path / "data"


def pack(data_dir: Path, out: Path, tokenizer: Path, *extra: str):
    return CliRunner().invoke(main, ["pack", str(data_dir), str(out), "--tokenizer", str(tokenizer),
                                     "--seq-length", "32", "-q", *extra])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    return result.output.strip()


# --- no pickle anywhere ------------------------------------------------------------------------------


def _keyword(call: ast.Call, name: str):
    return next((kw.value.value for kw in call.keywords if kw.arg == name and isinstance(kw.value, ast.Constant)), None)


def test_no_pickle_anywhere_in_packsft():
    """Every np.load/np.save passes allow_pickle=False, torch.load weights_only=True; no pickle module."""
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                if any(name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve") for name in names):
                    offences.append(f"{where}: imports a pickle module")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                if owner in ("np", "numpy") and node.func.attr in ("load", "save") and _keyword(node, "allow_pickle") is not False:
                    offences.append(f"{where}: np.{node.func.attr} without allow_pickle=False")
                if owner == "torch" and node.func.attr == "load" and _keyword(node, "weights_only") is not True:
                    offences.append(f"{where}: torch.load without weights_only=True")
                if node.func.attr in ("read_pickle", "to_pickle"):
                    offences.append(f"{where}: {node.func.attr}")
    assert offences == []


# --- trust_remote_code --------------------------------------------------------------------------------


@pytest.fixture
def remote_code_calls(monkeypatch) -> list:
    monkeypatch.setenv("PACKSFT_CACHE", "off")  # every load goes through transformers, as a first run's does
    calls = []
    original = transformers.AutoTokenizer.from_pretrained

    def recording(name, **kwargs):
        calls.append(kwargs.get("trust_remote_code"))
        return original(name, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording)
    return calls


def test_tokenizers_load_without_remote_code_by_default(data_dir, tmp_path, demo_tokenizer_dir, remote_code_calls):
    assert pack(data_dir, tmp_path / "out", demo_tokenizer_dir).exit_code == 0
    assert CliRunner().invoke(main, ["inspect", str(tmp_path / "out")]).exit_code == 0
    assert verify_output(tmp_path / "out", deep=True) == []
    assert remote_code_calls == [False, False, False]  # pack, inspect, verify --deep
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["config"]["trust_remote_code"] is False


def test_trust_remote_code_flag_is_passed_through(data_dir, tmp_path, demo_tokenizer_dir, remote_code_calls):
    assert pack(data_dir, tmp_path / "out", demo_tokenizer_dir, "--trust-remote-code").exit_code == 0
    assert remote_code_calls == [True]
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["config"]["trust_remote_code"] is True
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "out"), "--deep"])
    assert result.exit_code == 1 and remote_code_calls == [True]  # verify never runs remote code
    assert "deep check skipped: the tokenizer needs remote code, which verify never runs. " in result.stdout
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "out"), "--deep", "--allow-skip"])
    assert result.exit_code == 0 and remote_code_calls == [True]
    assert "note: deep check skipped: the tokenizer needs remote code, which verify never runs" in result.stderr


# --- writes stay inside OUT_DIR; foreign folders and symlinks are left alone ----------------------------


def snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every file and link under root (except under skip): content hash or link target."""
    found = {}
    for path in sorted(root.rglob("*")):
        if skip == path or skip in path.parents:
            continue
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_overwrite_never_follows_symlinks_out_of_out_dir(data_dir, tmp_path, demo_tokenizer_dir):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep me")
    (outside / "sub" / "deep.txt").write_text("and me")
    assert pack(data_dir, out, demo_tokenizer_dir).exit_code == 0
    (out / "linked-dir").symlink_to(outside)
    (out / "shards" / "linked-dir").symlink_to(outside / "sub")
    (out / "shards" / "00000" / "linked-file").symlink_to(outside / "keep.txt")
    (out / "dataset.json").unlink()
    (out / "dataset.json").symlink_to(outside / "keep.txt")  # a write through it would clobber keep.txt
    before = snapshot(tmp_path, skip=out)
    result = pack(data_dir, out, demo_tokenizer_dir, "--overwrite")
    assert result.exit_code == 0, result.output
    assert snapshot(tmp_path, skip=out) == before
    assert (outside / "keep.txt").read_text() == "keep me" and (outside / "sub" / "deep.txt").read_text() == "and me"
    assert not any(path.is_symlink() for path in out.rglob("*"))
    assert_output_verifies(out)


def test_pack_writes_nothing_outside_out_dir(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "nested" / "out"
    before = snapshot(tmp_path, skip=out)
    assert pack(data_dir, out, demo_tokenizer_dir).exit_code == 0
    assert snapshot(tmp_path, skip=out) == before


# --- a full disk or a permission error: one line, nothing that looks complete --------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def assert_incomplete(out: Path) -> None:
    assert not (out / "dataset.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert [str(p) for p in verify_output(out)] == ["dataset.json: missing (the pack did not finish; rerun it)"]


def test_full_disk_while_writing_arrays(data_dir, tmp_path, demo_tokenizer_dir, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr("packsft.write.writer.np.save", enospc)
    message = one_line_error(pack(data_dir, out, demo_tokenizer_dir))
    assert message == (f"Error: {out / 'shards' / '00000'}: cannot write shard (No space left on device); "
                       "check free space and permissions")
    assert not (out / "shards" / "00000").exists()
    assert_incomplete(out)


def test_full_disk_while_writing_dataset_json_over_an_earlier_output(data_dir, tmp_path, demo_tokenizer_dir, monkeypatch):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir).exit_code == 0
    replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "dataset.json":
            enospc()
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    message = one_line_error(pack(data_dir, out, demo_tokenizer_dir, "--overwrite"))
    assert message == (f"Error: {out / 'dataset.json'}: cannot write (No space left on device); "
                       "check free space and permissions")
    assert_incomplete(out)


def test_permission_error_while_clearing_an_earlier_output(data_dir, tmp_path, demo_tokenizer_dir, monkeypatch):
    out = tmp_path / "out"
    assert pack(data_dir, out, demo_tokenizer_dir).exit_code == 0

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(shutil, "rmtree", denied)
    message = one_line_error(pack(data_dir, out, demo_tokenizer_dir, "--overwrite"))
    assert message == f"Error: {out}: cannot clear the earlier output (Permission denied); check permissions"


# Root bypasses file permissions through two capabilities; a process without them is refused like any user.
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def run_without_permission_override(*args: str) -> subprocess.CompletedProcess:
    """`python -m packsft ARGS` in a process that file permissions apply to.

    CI runs as root, which ignores permissions: there the child drops the capabilities that let root
    bypass them (setpriv, util-linux), so the refusal is tested on every run instead of skipped.
    """
    command = [sys.executable, "-m", "packsft", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv (util-linux): cannot test a permission error")
        command = [setpriv, f"--bounding-set={DAC_CAPABILITIES}", f"--inh-caps={DAC_CAPABILITIES}", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file permissions")
def test_read_only_out_dir(data_dir, tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = run_without_permission_override("pack", str(data_dir), str(out), "--tokenizer", str(demo_tokenizer_dir),
                                                 "--seq-length", "32", "-q")
    finally:
        out.chmod(0o755)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"Error: {out}: cannot create output (Permission denied)\n")
    assert list(out.iterdir()) == []
