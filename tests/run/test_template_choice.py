"""Which template a pack renders with: `--template auto` (the default), the flags only a chat template reads, and
`--chat-template FILE` (README "Rendering"; issue 27, item 5). On the demo tokenizer (no chat template) and the
ChatML fixture (a chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft import load_tokenizer
from packsft.cli import main
from packsft.render.tokenizer import load_output_tokenizer, read_chat_template
from packsft.report.inspect import tokenizer_for
from packsft.run.outdir import OutDir, read_plan
from packsft.run.unit import UnitJob, load_job_tokenizer
from packsft.write.layout import PackedOutput
from tests.helpers import CHATML, cli_pack, conv, error_line, output_arrays, write_conversations

RECORDS = [conv(("user", f"Question {i}?"), ("assistant", f"Answer {i}.")) for i in range(6)]
# CHATML with a default system message: another template for the same tokenizer.
CHATML_SYSTEM = "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML


@pytest.fixture
def data(tmp_path) -> Path:
    write_conversations(tmp_path / "data" / "a.parquet", RECORDS[:3])
    write_conversations(tmp_path / "data" / "b.parquet", RECORDS[3:])
    return tmp_path / "data"


@pytest.fixture
def template_file(tmp_path) -> Path:
    path = tmp_path / "system.jinja"
    path.write_text(CHATML_SYSTEM, encoding="utf-8")
    return path


def dataset(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def test_auto_renders_role_tokens_without_a_chat_template_and_records_roles(data, tmp_path, demo_tokenizer_dir):
    result = CliRunner().invoke(main, ["pack", str(data), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "32"])
    assert result.exit_code == 0, result.output
    assert "--template auto" not in result.stderr
    assert dataset(tmp_path / "out")["config"]["template"] == "roles"
    assert read_plan(tmp_path / "out").config["template"] == "roles"
    # Byte for byte what --template roles writes.
    assert cli_pack(data, tmp_path / "roles", demo_tokenizer_dir, "--template", "roles").exit_code == 0
    assert output_arrays(tmp_path / "out") == output_arrays(tmp_path / "roles")


def test_auto_renders_the_chat_template_where_there_is_one_and_says_so(data, tmp_path, chatml_dir):
    result = CliRunner().invoke(main, ["pack", str(data), str(tmp_path / "out"), "--tokenizer", str(chatml_dir),
                                       "--seq-length", "32"])
    assert result.exit_code == 0, result.output
    assert (f"packsft: --template auto renders with the chat template of tokenizer {str(chatml_dir)!r} "
            "(--template roles for role tokens)\n") in result.stderr
    assert dataset(tmp_path / "out")["config"]["template"] == "chat"
    assert dataset(tmp_path / "out")["tokenizer"]["template"] == "chat"
    assert cli_pack(data, tmp_path / "chat", chatml_dir, "--template", "chat").exit_code == 0
    assert output_arrays(tmp_path / "out") == output_arrays(tmp_path / "chat")
    # The resolved template is what the output is: a rerun with --template chat resumes it.
    assert cli_pack(data, tmp_path / "out", chatml_dir, "--template", "chat").exit_code == 0


@pytest.mark.parametrize(("flags", "named"), [
    (["--turns", "last"], "--turns applies"),
    (["--template-kwargs", "{}"], "--template-kwargs applies"),  # given: any value but the default (none)
    (["--turns", "inference", "--template-kwargs", '{"enable_thinking": false}'], "--turns and --template-kwargs apply"),
])
def test_chat_only_flags_under_auto_role_tokens_are_an_error_naming_the_fix(data, tmp_path, demo_tokenizer_dir,
                                                                               flags, named):
    result = cli_pack(data, tmp_path / "out", demo_tokenizer_dir, *flags)
    dropped = named.rsplit(" ", 1)[0]
    assert error_line(result) == (
        f"Error: {named} to chat templates only, and tokenizer {str(demo_tokenizer_dir)!r} has no chat template "
        f"(--template auto renders role tokens); pass --chat-template FILE to give it one, or drop {dropped}")
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("flags", [["--turns", "last"], ["--template-kwargs", '{"enable_thinking": false}']])
def test_chat_only_flags_under_template_roles_are_an_error_naming_the_fix(data, tmp_path, chatml_dir, flags):
    result = cli_pack(data, tmp_path / "out", chatml_dir, "--template", "roles", *flags)
    assert error_line(result) == (f"Error: {flags[0]} applies to chat templates only, but --template roles renders "
                                  f"role tokens; pass --template chat (or auto), or drop {flags[0]}")


def test_chat_only_flags_at_their_default_are_not_given(data, tmp_path, demo_tokenizer_dir):
    assert cli_pack(data, tmp_path / "out", demo_tokenizer_dir, "--template", "roles", "--turns", "rendered").exit_code == 0


def test_chat_template_with_template_roles_is_an_error(data, tmp_path, chatml_dir, template_file):
    result = cli_pack(data, tmp_path / "out", chatml_dir, "--template", "roles", "--chat-template", str(template_file))
    assert error_line(result) == ("Error: --chat-template applies to chat templates only, but --template roles "
                                  "renders role tokens; pass --template chat (or auto), or drop --chat-template")


def test_a_missing_chat_template_file_is_an_error(data, tmp_path, chatml_dir):
    result = cli_pack(data, tmp_path / "out", chatml_dir, "--chat-template", str(tmp_path / "none.jinja"))
    assert error_line(result) == (f"Error: --chat-template {tmp_path / 'none.jinja'}: no such file; "
                                  "pass a .jinja file holding a chat template")


def test_chat_template_file_replaces_the_template_and_is_recorded(data, tmp_path, chatml_dir, template_file,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_pack(data, tmp_path / "plain", chatml_dir).exit_code == 0
    assert cli_pack(data, tmp_path / "out", chatml_dir, "--chat-template", "system.jinja").exit_code == 0
    stored = dataset(tmp_path / "out")
    sha = read_chat_template(template_file).sha256
    assert stored["config"]["template"] == "chat"
    assert stored["config"]["chat_template"] == str(template_file)  # absolute: workers elsewhere find it
    assert stored["tokenizer"]["chat_template_file"] == {"path": str(template_file), "sha256": sha}
    assert stored["tokenizer"]["chat_template_sha256"] == sha
    assert stored["tokenizer"]["chat_template"] == CHATML_SYSTEM
    assert stored["tokenizer"]["fingerprint"] != dataset(tmp_path / "plain")["tokenizer"]["fingerprint"]
    row = PackedOutput(tmp_path / "out").row(0)
    text = load_tokenizer(str(chatml_dir), "chat").hf.decode(row.tokens[:int(row.segment_lengths[0])].tolist())
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_chat_template_file_is_part_of_identity(data, tmp_path, chatml_dir, template_file):
    assert cli_pack(data, tmp_path / "out", chatml_dir).exit_code == 0
    result = cli_pack(data, tmp_path / "out", chatml_dir, "--chat-template", str(template_file))
    assert "already holds a packsft output made differently (tokenizer" in error_line(result)
    # The same text at another path is the same output: it resumes.
    assert cli_pack(data, tmp_path / "over", chatml_dir, "--chat-template", str(template_file)).exit_code == 0
    moved = tmp_path / "moved.jinja"
    moved.write_text(CHATML_SYSTEM, encoding="utf-8")
    assert cli_pack(data, tmp_path / "over", chatml_dir, "--chat-template", str(moved)).exit_code == 0


def test_reloads_get_the_packed_template_without_the_file(data, tmp_path, chatml_dir, template_file):
    assert cli_pack(data, tmp_path / "out", chatml_dir, "--chat-template", str(template_file),
                    "--workers", "2").exit_code == 0
    assert cli_pack(data, tmp_path / "one", chatml_dir, "--chat-template", str(template_file),
                    "--workers", "1").exit_code == 0
    assert output_arrays(tmp_path / "out") == output_arrays(tmp_path / "one")
    output = PackedOutput(tmp_path / "out")
    # A worker that loads the tokenizer itself (SLURM, Ray) reads the file the config names.
    job = UnitJob(OutDir(tmp_path / "out"), read_plan(tmp_path / "out").pack_config(), False,
                  output.dataset["tokenizer"]["fingerprint"])
    assert load_job_tokenizer(job, 1, prove=False).chat_template == CHATML_SYSTEM
    template_file.unlink()
    # inspect (and anything that reloads from dataset.json) reads the template stored there.
    assert tokenizer_for(output).chat_template == CHATML_SYSTEM
    assert load_output_tokenizer(output.dataset["tokenizer"]).fingerprint == output.dataset["tokenizer"]["fingerprint"]
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "out"), "--no-color"])
    assert result.exit_code == 0, result.output
    assert "<system     > 'Be brief.'" in result.output  # the system message the stored template renders


def test_the_tokenizer_cache_keys_on_the_chat_template(chatml_dir, template_file, tmp_path):
    own = load_tokenizer(str(chatml_dir), "chat")
    replaced = load_tokenizer(str(chatml_dir), "chat", chat_template=read_chat_template(template_file))
    again = load_tokenizer(str(chatml_dir), "auto", chat_template=read_chat_template(template_file))
    assert (own.chat_template, replaced.chat_template) == (CHATML, CHATML_SYSTEM)
    assert replaced.fingerprint != own.fingerprint
    assert (again.fingerprint, again.template, again.chat_template_file) == (
        replaced.fingerprint, "chat", str(template_file))
    assert replaced.hf.chat_template == CHATML_SYSTEM  # the transformers tokenizer too (checked by fingerprint)
    assert load_tokenizer(str(chatml_dir), "chat").chat_template_file is None
