"""A run that packs nothing, or mostly rejects, fails and leaves no dataset.json; merge decides for array tasks."""

from __future__ import annotations

import json

from tests.helpers import GOOD, conv, error_line, write_conversations
from tests.helpers import cli_pack as pack
from tests.helpers import cli_run as run


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
        assert pack(data, out, demo_tokenizer_dir, "--num-tasks", "2", "--task-index", index).exit_code == 0
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
