"""`inspect` and `report` mark the trained tokens themselves and name control tokens by their part in the template.

The hermetic ChatML fixture (the demo tokenizer plus <|im_start|>/<|im_end|>, <|im_end|> its EOS and pad) and
Qwen3 where present: a prompt line never shows ▶, the <|im_end|> that closes an assistant turn does, and it is
called "end of turn", never "EOS".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from packsft import PackConfig, PackedOutput, load_tokenizer
from packsft.cli import main
from packsft.report.html import write_report
from packsft.report.inspect import MID_CONV, sections, tokenizer_for, trained_tokens
from packsft.report.markers import END_OF_TURN, PAD, template_markers
from packsft.run import run_pack
from tests.helpers import conv, write_conversations

RECORD = conv(("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "Bye?"), ("assistant", "Bye."))

CHATML_VIEW = f"""── Chunk 0 (shard 00000, row 0) {'─' * 30}
  no BOS (chat template)   trained: 10/96 tokens (10.4%)   segments: 1   padding: 35
  │ segment 1 at 0
    <system     > 'Be brief.'
    <end of turn> ''
    <user       > 'Hi?'
    <end of turn> ''
  ▶ <assistant  > 'Hello.'
  ▶ <end of turn> ''
    <user       > 'Bye?'
    <end of turn> ''
  ▶ <assistant  > 'Bye.'
  ▶ <end of turn> ''
    <PAD        > × 35

✓ context before first trained label:
     role tokens seen : ['system', 'end of turn', 'user', 'end of turn', 'assistant']
     user context     : 'Be brief.\\nHi?'
     first prediction : 'He'
     ✓ full user turn visible before first trained token

"""


@pytest.fixture(scope="module")
def chatml_out(tmp_path_factory, chatml_dir) -> Path:
    root = tmp_path_factory.mktemp("markers")
    write_conversations(root / "data" / "part.parquet", [RECORD])
    config = PackConfig(tokenizer=str(chatml_dir), template="chat", strategy="bestfit", seq_length=96)
    return run_pack(root / "data", root / "out", config, quiet=True).out_dir


def test_chatml_markers_are_named_by_their_part(chatml_dir):
    tokenizer = load_tokenizer(str(chatml_dir), "chat")
    markers = template_markers(tokenizer)
    im_start, im_end = tokenizer.hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tokenizer.eos_id == tokenizer.pad_id == im_end  # the tokenizer calls it EOS: the template ends turns with it
    assert markers.names[im_end] == END_OF_TURN and markers.names[im_start] == "im_start"
    assert {role: tokenizer.hf.decode(ids) for role, ids in markers.headers} == {
        "system": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}


def test_inspect_marks_the_trained_tokens_themselves(chatml_out):
    code_output = CliRunner().invoke(main, ["inspect", str(chatml_out), "--chunk", "0"])
    assert code_output.exit_code == 0, code_output.output
    assert code_output.output == CHATML_VIEW
    assert "n/a" not in code_output.output and "EOS" not in code_output.output


def test_a_line_is_marked_exactly_when_one_of_its_tokens_is_a_trained_label(chatml_out):
    output = PackedOutput(chatml_out)
    tokenizer = tokenizer_for(output)
    row = output.row(0)
    found = sections(row.tokens, trained_tokens(row.loss_mask), tokenizer)
    assert [s.role for s in found if s.role not in ("end of turn", PAD)] == [
        "system", "user", "assistant", "user", "assistant"]
    for section in found:
        own = [int(row.loss_mask[p - 1]) for p in range(max(section.start, 1), section.end)]
        assert section.trained == any(own), section
    ends = [s for s in found if s.role == END_OF_TURN and s.trained]
    assert [tokenizer.hf.decode(row.tokens[s.start : s.start + 1]) for s in ends] == ["<|im_end|>", "<|im_end|>"]
    assert MID_CONV not in [s.role for s in found]


def test_report_names_im_end_end_of_turn_not_eos(chatml_out, tmp_path):
    page = write_report(chatml_out, tmp_path / "r.html").read_text()
    badges = re.findall(r'<span class="t (\w+) rl" title="id \d+ · pos (\d+) · [^"]*">([^<]*)</span>', page)
    assert [(flag, name) for flag, _, name in badges] == [
        ("ms", "system"), ("ms", "end of turn"), ("ms", "user"), ("ms", "end of turn"), ("ms", "assistant"),
        ("tr", "end of turn"), ("ms", "user"), ("ms", "end of turn"), ("ms", "assistant"), ("tr", "end of turn")]
    assert "EOS" not in page.split('<h2 id="chunks">')[1]
    assert re.search(r'title="id \d+ · pos \d+ · trained · &lt;\|im_end\|&gt; · end of turn">end of turn</span>', page)
    assert "no BOS</small>" in page


def test_qwen3_markers(qwen3_dir):
    """Qwen3 pads with <|endoftext|> and ends turns with <|im_end|>, its EOS: neither is called EOS."""
    tokenizer = load_tokenizer(str(qwen3_dir), "chat")
    markers = template_markers(tokenizer)
    names = {tokenizer.hf.convert_ids_to_tokens(i): name for i, name in markers.names.items()}
    assert names["<|im_end|>"] == END_OF_TURN and names["<|endoftext|>"] == PAD
    assert names["<|im_start|>"] == "im_start" and "EOS" not in names.values()
    assert {role: tokenizer.hf.decode(ids) for role, ids in markers.headers} == {
        "system": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"}


def test_roles_template_keeps_its_role_names(demo_tokenizer_dir, tmp_path):
    write_conversations(tmp_path / "data" / "part.parquet", [RECORD])
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), template="roles", seq_length=64)
    out = run_pack(tmp_path / "data", tmp_path / "out", config, quiet=True).out_dir
    output = PackedOutput(out)
    tokenizer = tokenizer_for(output)
    row = output.row(0)
    found = sections(row.tokens, trained_tokens(row.loss_mask), tokenizer,
                     pad_from=int(row.segment_lengths.sum()))
    assert [(s.role, s.text, s.trained) for s in found] == [
        ("BOS", "", False), ("SYS", "Be brief.", False), ("USR", "Hi?", False), ("ASST", "Hello.", True),
        ("USR", "Bye?", True), ("ASST", "Bye.", True), ("EOS", "", True), (PAD, "", False)]
    view = CliRunner().invoke(main, ["inspect", str(out), "--chunk", "0"]).output
    assert "✓ starts at BOS : True" in view
    assert "  ▶ <USR      > 'Bye?'   (only the USR token is trained)\n" in view
    assert np.array_equal(trained_tokens(row.loss_mask)[1:], row.loss_mask.astype(bool))
