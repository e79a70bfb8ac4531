"""Nothing silent: outputs a training run should not start on fail, common data shapes just work,
offline starts fail fast, inputs scale, the loader exits cleanly, SLURM arrays shard only when asked,
and a full disk leaves complete units intact."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft import PackConfig
from packsft.cli import main
from packsft.errors import ConfigError, InputError
from packsft.read.inputs import list_inputs
from packsft.run.pipeline import run_pack
from packsft.run.plan import plan_inputs
from packsft.run.slurm import resolve_tasks
from packsft.verify.checks import check_output
from packsft.write.layout import ARRAY_FILES
from tests.helpers import assert_output_verifies, conv, write_conversations

ROOT = Path(__file__).resolve().parents[1]
GOOD = [conv(("user", f"Question {i}?"), ("assistant", f"Answer number {i}. " * (i % 4 + 1))) for i in range(9)]
ROLES = {"user": "human", "assistant": "gpt"}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def pack(data, out: Path, tokenizer: Path, *extra: str):
    inputs = [str(d) for d in data] if isinstance(data, list) else [str(data)]
    return run("pack", *inputs, str(out), "--tokenizer", str(tokenizer), "--seq-length", "32", "-q", *extra)


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1, result.output
    return result.output.strip()


def arrays(out: Path) -> dict[str, bytes]:
    return {f"{shard.name}/{name}": (shard / name).read_bytes()
            for shard in sorted((out / "shards").iterdir()) if not shard.name.startswith(".")
            for name in ARRAY_FILES}


# --- 1. a run that packs nothing, or mostly rejects, fails and leaves no dataset.json ------------------


def test_all_records_rejected_fails_with_the_reasons(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "data"
    write_conversations(data / "ints.parquet", [{"messages": 7}, {"messages": 8}, {"messages": 9}])
    out = tmp_path / "out"
    assert error_line(pack(data, out, demo_tokenizer_dir)) == (
        f"Error: {out}: nothing packed (0 chunks): 3 records read, 3 rejected (messages is not a list: 3); "
        f"no dataset.json was written; the rejected records are listed in {out / 'rejects.jsonl'}. Check that "
        "the input holds conversations in a shape packsft reads (--input-format, --role-map), and --source-filter"
    )
    assert not (out / "dataset.json").exists()
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 3
    # Accepting any share of rejects does not make an empty output usable.
    assert "nothing packed" in error_line(pack(data, out, demo_tokenizer_dir, "--max-reject-fraction", "1"))


def test_too_many_rejects_fail_then_a_rerun_accepting_them_finishes(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "data"
    write_conversations(data / "a.parquet", GOOD[:3] + [conv(("robot", "beep"), ("assistant", "boop"))])
    out = tmp_path / "out"
    assert error_line(pack(data, out, demo_tokenizer_dir)) == (
        f"Error: {out}: 1 of 4 records rejected (25.0%, more than --max-reject-fraction 0.1): message has unknown "
        f"role: 1; no dataset.json was written; the rejected records are listed in {out / 'rejects.jsonl'}. Fix "
        "the input (--input-format, --role-map), or accept it with --max-reject-fraction 0.25 (a rerun keeps the "
        "packed units)"
    )
    assert not (out / "dataset.json").exists() and (out / "shards" / "00000" / "manifest.json").exists()
    result = run("pack", str(data), str(out), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32",
                 "--max-reject-fraction", "0.25")
    assert result.exit_code == 0, result.output
    assert "(0 units packed, 1 already done)" in result.output  # the threshold is not part of the fingerprint
    assert "     1  message has unknown role" in result.output  # the summary lists reasons
    assert json.loads((out / "dataset.json").read_text())["config"]["max_reject_fraction"] == 0.25


def test_array_tasks_leave_the_decision_to_merge(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "data"
    write_conversations(data / "a.parquet", GOOD[:4])
    write_conversations(data / "b.parquet", [{"messages": []}] * 4)
    out = tmp_path / "out"
    for index in ("0", "1"):  # each task packs its unit and exits 0: only merge sees every unit
        assert pack(data, out, demo_tokenizer_dir, "--num-shards", "2", "--shard-index", index).exit_code == 0
    message = error_line(run("merge", str(out)))
    assert message.startswith(f"Error: {out}: 4 of 8 records rejected (50.0%, more than --max-reject-fraction 0.1): "
                              "empty message list: 4;")
    assert not (out / "dataset.json").exists()
    result = run("merge", str(out), "--max-reject-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert (out / "dataset.json").exists()


def test_stats_and_report_show_reject_reasons(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "data"
    write_conversations(data / "a.parquet", GOOD + [{"messages": []}])
    out = tmp_path / "out"
    assert pack(data, out, demo_tokenizer_dir, "--max-reject-fraction", "0.2").exit_code == 0
    assert "         1  empty message list" in run("stats", str(out)).output.splitlines()
    assert json.loads(run("stats", str(out), "--json").output)["rejected_by_reason"] == {"empty message list": 1}
    page = tmp_path / "report.html"
    assert run("report", str(out), "-o", str(page), "--chunks", "0").exit_code == 0
    assert "empty message list" in page.read_text()


# --- 2. conversations stored as JSON text --------------------------------------------------------------


def _as_sharegpt(record: dict) -> dict:
    return {"conversations": [{"from": ROLES[m["role"]], "value": m["content"]} for m in record["messages"]]}


@pytest.mark.parametrize("shape", ["messages", "conversations"])
@pytest.mark.parametrize("container", ["parquet", "jsonl"])
def test_json_text_conversations_pack_like_structs(tmp_path, demo_tokenizer_dir, shape, container):
    records = GOOD if shape == "messages" else [_as_sharegpt(r) for r in GOOD]
    as_text = [{shape: json.dumps(r[shape])} for r in records] + [{shape: '[{"role": "user"'}]
    structs, text = tmp_path / "structs", tmp_path / "text"
    write_conversations(structs / "a.parquet", records)
    if container == "parquet":
        write_conversations(text / "a.parquet", as_text)
    else:
        (text).mkdir()
        (text / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in as_text))
    assert pack(structs, tmp_path / "out-structs", demo_tokenizer_dir).exit_code == 0
    result = CliRunner().invoke(main, ["pack", str(text), str(tmp_path / "out-text"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "32", "--max-reject-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    shape_name = {"messages": "smoltalk" if container == "parquet" else "openai", "conversations": "sharegpt"}[shape]
    kind = "column" if container == "parquet" else "key"
    assert f"packsft: input format {shape_name} (auto, from the '{shape}' {kind} of JSON text) for 1 file" in result.output
    assert arrays(tmp_path / "out-text") == arrays(tmp_path / "out-structs")
    stats = json.loads((tmp_path / "out-text" / "dataset.json").read_text())["stats"]
    assert stats["rejected_by_reason"] == {f"{shape} is not valid JSON": 1}
    reject = json.loads((tmp_path / "out-text" / "rejects.jsonl").read_text())
    assert reject["row"] == len(GOOD) and reject["reason"].startswith(f"{shape} is not valid JSON (got ")


def test_json_text_is_named_when_the_input_format_is_given(tmp_path, demo_tokenizer_dir):
    write_conversations(tmp_path / "data" / "a.parquet", [{"messages": json.dumps(r["messages"])} for r in GOOD])
    result = CliRunner().invoke(main, ["pack", str(tmp_path / "data"), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "32", "--input-format", "smoltalk"])
    assert result.exit_code == 0, result.output
    assert "packsft: input format smoltalk, conversations as JSON text (decoded per record) in 1 file" in result.output


# --- 3. offline start ------------------------------------------------------------------------------------

OFFLINE_BOUND_S = 45  # not a benchmark: the hub client alone used to retry for ~60 s before failing


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_default_tokenizer_without_the_hub_fails_fast_with_what_to_do(tmp_path, how):
    write_conversations(tmp_path / "data" / "a.parquet", GOOD[:2])
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache
    if how == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "packsft", "pack", str(tmp_path / "data"), str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    why = ("HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set" if how == "HF_HUB_OFFLINE"
           else f"the hub ({env['HF_ENDPOINT']}) did not answer within 3 s")
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot load tokenizer 'gpt2': it is a model-hub name, {why}, and it is not in the local Hugging "
        "Face cache. Pass a local tokenizer folder: --tokenizer path/to/folder (holding tokenizer.json, or "
        "vocab.json + merges.txt; on a machine that reaches the hub, AutoTokenizer.from_pretrained('gpt2')"
        ".save_pretrained('folder') writes one)"
    )
    assert elapsed < OFFLINE_BOUND_S, f"took {elapsed:.0f} s"
    assert not (tmp_path / "out" / "dataset.json").exists()


# --- 4. inputs: folders, globs, files, URLs; many files ----------------------------------------------


@pytest.fixture
def tree(tmp_path) -> Path:
    data = tmp_path / "data"
    write_conversations(data / "b" / "two.parquet", GOOD[3:6])
    write_conversations(data / "a.parquet", GOOD[:3])
    (data / "c").mkdir()
    (data / "c" / "three.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD[6:]))
    (data / "notes.txt").write_text("not an input")
    return data


def test_inputs_as_folder_glob_and_files_are_named_from_their_common_root(tree):
    assert list_inputs(tree).root == str(tree)
    names = ["a.parquet", "b/two.parquet", "c/three.jsonl"]
    assert [name for name, _ in list_inputs(tree).files] == names
    assert [name for name, _ in list_inputs(f"{tree}/**/*.parquet").files] == ["a.parquet", "b/two.parquet"]
    listing = list_inputs([str(tree / "c" / "three.jsonl"), str(tree / "b"), str(tree / "a.parquet")])
    assert listing.root == str(tree) and [name for name, _ in listing.files] == names
    assert [name for name, _ in list_inputs([str(tree / "b"), f"{tree}/b/*.parquet"]).files] == ["two.parquet"]


@pytest.mark.parametrize("spec, message", [
    ("{d}/*.csv", "{d}/*.csv: the pattern matches no *.parquet, *.jsonl[.gz] or *.json[.gz] files"),
    ("{d}/notes.txt", "{d}/notes.txt: not a *.parquet, *.jsonl[.gz] or *.json[.gz] file"),
    ("{d}/nope", "{d}/nope: no such file or folder. Pass the folder (or the files) that hold your records: *.parquet, *.jsonl[.gz] or *.json[.gz]"),
])
def test_inputs_that_yield_nothing_are_errors(tree, spec, message):
    with pytest.raises(InputError) as error:
        list_inputs(spec.format(d=tree))
    assert str(error.value) == message.format(d=tree)


def test_several_inputs_pack_like_one_folder_and_resume_and_verify_deep(tree, tmp_path, demo_tokenizer_dir):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert pack(tree, whole, demo_tokenizer_dir).exit_code == 0
    inputs = [f"{tree}/*.parquet", tree / "b", tree / "c" / "three.jsonl"]
    assert pack(inputs, parts, demo_tokenizer_dir).exit_code == 0
    assert arrays(parts) == arrays(whole)
    plan = json.loads((parts / "plan.json").read_text())
    assert plan["inputs"] == [str(i) for i in inputs] and plan["data_dir"] == str(tree)
    result = run("pack", *map(str, inputs), str(parts), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32")
    assert "(0 units packed, 3 already done)" in result.output
    assert_output_verifies(parts, deep=True)


def test_remote_urls_are_read_through_fsspec(tree, tmp_path, demo_tokenizer_dir):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in (tree / "b" / "two.parquet", tree / "c" / "three.jsonl"):
        memory.pipe(f"/silent-bucket/data/{path.parent.name}/{path.name}", path.read_bytes())
    local = tmp_path / "local"
    (local / "b").mkdir(parents=True)
    (local / "c").mkdir()
    for path in (tree / "b" / "two.parquet", tree / "c" / "three.jsonl"):
        (local / path.parent.name / path.name).write_bytes(path.read_bytes())
    try:
        config = PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=32)
        result = run_pack("memory://silent-bucket/data", tmp_path / "remote-out", config, quiet=True, workers=1)
        run_pack(local, tmp_path / "local-out", config, quiet=True, workers=1)
    finally:
        memory.rm("/silent-bucket", recursive=True)
    assert [s["inputs"][0]["path"] for s in result.dataset["shards"]] == ["b/two.parquet", "c/three.jsonl"]
    assert result.dataset["data_dir"] == "memory:///silent-bucket/data"  # fsspec writes the memory root so
    assert arrays(tmp_path / "remote-out") == arrays(tmp_path / "local-out")
    report = check_output(tmp_path / "remote-out", deep=True)
    assert report.ok and report.notes == [
        "deep check skipped: the inputs are remote (memory:///silent-bucket/data); --deep re-packs local inputs only"]


def test_a_remote_scheme_without_its_filesystem_library_says_what_to_install(monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    with pytest.raises(InputError) as error:
        list_inputs("s3://bucket/data")
    assert str(error.value) == ("s3://bucket/data: reading s3:// URLs needs s3fs, which is not installed (Install "
                                "s3fs to access S3). pip install s3fs (or copy the files to a local folder)")
    with pytest.raises(InputError, match="mixes local paths and URLs"):
        list_inputs(["s3://bucket/data", "data/"])


MANY_FILES = 10_000


def _small_files(folder: Path, count: int) -> None:
    for index in range(count):
        path = folder / f"part-{index % 100:02d}" / f"f{index:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(conv(("user", f"Q{index}?"), ("assistant", f"A{index}."))) + "\n")


@pytest.mark.slow
def test_ten_thousand_small_files_plan_one_unit_each_in_name_order(tmp_path):
    _small_files(tmp_path / "data", MANY_FILES)
    units, skipped = plan_inputs(tmp_path / "data")
    assert len(units) == MANY_FILES and skipped == []
    names = [unit.name for unit in units]
    assert names == sorted(names) and names[:2] == ["part-00/f00000.jsonl", "part-00/f00100.jsonl"]
    assert [unit.index for unit in units] == list(range(MANY_FILES))


def test_packing_many_files_does_constant_work_per_file(tmp_path, demo_tokenizer_dir, monkeypatch):
    """No step rescans the output or re-opens inputs per unit: every count is linear in the files."""
    files = 200
    _small_files(tmp_path / "data", files)
    calls = {"open_input": 0, "read_manifest": 0, "listdir": 0}

    def counted(module: str, name: str, key: str) -> None:
        original = getattr(sys.modules[module], name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(f"{module}.{name}", wrapper)

    counted("packsft.run.plan", "open_input", "open_input")
    counted("packsft.stages", "open_input", "open_input")
    counted("packsft.run.outdir", "read_manifest", "read_manifest")
    original_iterdir = Path.iterdir

    def iterdir(self):
        calls["listdir"] += self.name == "shards"
        return original_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test measures
    result = run_pack(tmp_path / "data", tmp_path / "out", PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=16),
                      quiet=True, workers=1)
    assert len(result.dataset["shards"]) == files
    # Each file is opened to plan and to pack it; each manifest is read to skip done units, to check
    # the run completed them, at merge to check again and to sum them. shards/ is listed a fixed number of times.
    assert calls == {"open_input": 2 * files, "read_manifest": 4 * files, "listdir": 2}


# --- 5. the loader exits cleanly with a live iterator ------------------------------------------------

EXIT_SCRIPTS = {
    "live iterator at exit": "it = iter(loader)\nfor _ in range(3):\n    next(it)\n",
    "iterator dropped mid-epoch": "it = iter(loader)\nnext(it)\ndel it\nimport gc; gc.collect()\nnext(iter(loader))\n",
    "loop broken": "for step, batch in enumerate(loader):\n    if step == 2:\n        break\n",
    "sys.exit inside the loop": "import sys\nfor batch in loader:\n    sys.exit(0)\n",
    "segments, live iterator": "it = iter(PackedLoader(out, batch_size=32, seed=0, segments=True))\nnext(it)\n",
}
EXIT_RUNS = 30  # without the fix, about 1 run in 5 aborted on a busy 2-core machine (6 of 30 once)


@pytest.fixture(scope="module")
def loader_output(tmp_path_factory, demo_tokenizer_dir) -> Path:
    pytest.importorskip("torch", reason="the loader needs PyTorch (pip install packsft[torch])")
    from packsft.demo import demo_conversations

    data = tmp_path_factory.mktemp("loader-data")
    records = demo_conversations()
    for part in range(3):
        write_conversations(data / f"part{part}.parquet", records[part::3])
    out = tmp_path_factory.mktemp("loader") / "out"
    run_pack(data, out, PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=64), quiet=True)
    return out


@pytest.mark.slow
def test_loader_exits_cleanly_with_live_or_dropped_iterators(loader_output):
    """Fresh processes, one after the other: the abort needs a fresh interpreter's shutdown (forked
    children never showed it) and was likeliest with a busy CPU beside it."""
    names = sorted(EXIT_SCRIPTS)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # CPU load beside the first half
    failures = []
    try:
        for index in range(EXIT_RUNS):
            if index == EXIT_RUNS // 2:
                burner.kill()
            name = names[index % len(names)]
            script = (f"from packsft.loader import PackedLoader\nout = {str(loader_output)!r}\n"
                      f"loader = PackedLoader(out, batch_size={2 + 30 * (index % 2)}, seed=0)\n{EXIT_SCRIPTS[name]}")
            result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                                    timeout=300)
            if result.returncode != 0 or result.stderr:
                failures.append((name, result.returncode, result.stderr[-300:]))
    finally:
        burner.kill()
        burner.wait()
    assert failures == []


def test_the_exit_hook_stops_every_background_reader(loader_output):
    """What makes the exit clean, checked in this process: the hook leaves no reader thread running."""
    import threading

    from packsft.loader import PackedLoader
    from packsft.loader.batches import _BackgroundReader

    iterators = [iter(PackedLoader(loader_output, batch_size=2, seed=seed)) for seed in range(3)]
    for iterator in iterators:
        next(iterator)
    assert sum(t.name == "packsft-loader" for t in threading.enumerate()) == 3
    _BackgroundReader.close_all()  # what atexit runs
    assert [t for t in threading.enumerate() if t.name == "packsft-loader"] == []
    assert len(_BackgroundReader._live) == 0


# --- 6. SLURM arrays shard only when asked ----------------------------------------------------------


def test_shards_come_from_flags_or_from_env_only_when_asked(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert resolve_tasks(None, None) == (1, 0)  # inside an array, but sharding was not asked for
    assert resolve_tasks("3", 1) == (3, 1)
    assert resolve_tasks("from-env", None) == (4, 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")  # --array=1-4
    assert resolve_tasks("from-env", None) == (4, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")  # --array=1,7: not consecutive
    with pytest.raises(ConfigError, match="array task 7 is not one of 4 consecutive tasks"):
        resolve_tasks("from-env", None)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(ConfigError, match="not inside a SLURM array task"):
        resolve_tasks("from-env", None)
    with pytest.raises(ConfigError, match="expected a count of 1 or more, or from-env"):
        resolve_tasks("two", None)


def test_pack_inside_an_array_packs_everything_and_says_how_to_shard(tmp_path, demo_tokenizer_dir, monkeypatch):
    data = tmp_path / "data"
    for name in "abc":
        write_conversations(data / f"{name}.parquet", GOOD[:3])
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    result = run("pack", str(data), str(tmp_path / "out"), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32")
    assert result.exit_code == 0, result.output
    assert ("packsft: SLURM array task 1 of 3: packing every unit of the input (to split the units among the "
            "array's tasks instead, pass --num-tasks from-env)") in result.output
    assert len(json.loads((tmp_path / "out" / "dataset.json").read_text())["shards"]) == 3
    shard = run("pack", str(data), str(tmp_path / "task"), "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "32",
                "-q", "--num-shards", "from-env")
    assert shard.exit_code == 0 and not (tmp_path / "task" / "dataset.json").exists()
    assert sorted(p.name for p in (tmp_path / "task" / "shards").iterdir()) == ["00001"]


# --- 7. a full disk mid-run --------------------------------------------------------------------------

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
    assert pack(data, reference, demo_tokenizer_dir, "--seq-length", "256").exit_code == 0
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
        _assert_first_unit_intact(out, reference, error_line(pack(data, out, demo_tokenizer_dir, "--seq-length", "256")))
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)  # space freed
        assert pack(data, out, demo_tokenizer_dir, "--seq-length", "256").exit_code == 0
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
        _assert_first_unit_intact(out, reference, error_line(pack(data, out, demo_tokenizer_dir, "--seq-length", "256")))
    assert pack(data, out, demo_tokenizer_dir, "--seq-length", "256").exit_code == 0
    assert arrays(out) == arrays(reference)



@pytest.mark.parametrize("template", ["roles", "chat"])
@pytest.mark.parametrize("encoder", ["hf", "auto"])
def test_lone_surrogates_from_json_are_rejected_not_replaced(tmp_path, demo_tokenizer_dir, chatml_dir, template, encoder):
    """JSON can spell a lone surrogate ("\\ud800"); no tokenizer encodes it unchanged: HF refused it with a
    TypeError traceback, the fast encoder replaced it with U+FFFD. Now it is a counted reject either way."""
    data = tmp_path / "data"
    data.mkdir()
    bad = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "ok"}]}'
    text = '{"text": "x\\udc00y"}'
    good = [json.dumps(record) for record in GOOD]
    (data / "chats.jsonl").write_text("\n".join([*good, bad]) + "\n")
    tokenizer = chatml_dir if template == "chat" else demo_tokenizer_dir
    config = PackConfig(tokenizer=str(tokenizer), template=template, encoder=encoder, seq_length=64,
                        max_reject_fraction=0.5)
    result = run_pack(data, tmp_path / "out", config, quiet=True, workers=1)
    assert result.dataset is not None and result.dataset["stats"]["records_rejected"] == 1
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert (reject["row"], reject["reason"]) == (len(GOOD), (
        "message 0 content is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); "
        "no tokenizer can encode it unchanged"))
    assert_output_verifies(tmp_path / "out", deep=True)
    (data / "chats.jsonl").unlink()
    (data / "docs.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + text + "\n")
    docs = run_pack(data, tmp_path / "docs", PackConfig(**{**config.to_dict(), "format": "text", "max_reject_fraction": 1.0}),
                    quiet=True, workers=1)
    assert docs.dataset is not None and docs.dataset["stats"]["rejected_by_reason"] == {
        "text is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); no tokenizer can encode "
        "it unchanged": 1}
