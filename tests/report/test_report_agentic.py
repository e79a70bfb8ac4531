"""`inspect` and `report` on agentic data: reasoning, tool calls, tool results and tool definitions as kinds.

Outputs are packed with the CLI from OpenAI-style tool-calling records, with the Qwen3 chat template (where most
markers are tokens of their own) and with the roles template on the demo tokenizer (where they are plain text).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from packsft import PackConfig, PackedOutput, load_tokenizer
from packsft.cli import main
from packsft.demo import DATA_DIR
from packsft.report.html import write_report
from packsft.report.inspect import KIND_MARKERS, render_chunk, sections, tokenizer_for, trained_tokens
from packsft.report.page import KIND_CLASSES
from packsft.run import run_pack
from tests.helpers import AGENT, SEARCH, WEATHER, call

WEATHER_BRIEF = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
# Reasoning, text and a call in one assistant turn, then a tool result and a reasoned answer.
REASONED = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me check.", "reasoning_content": "Need the tool.",
     "tool_calls": [call("get_weather", '{"city": "Paris"}', "a")]},
    {"role": "tool", "tool_call_id": "a", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 C.", "reasoning_content": "Read the tool result."},
], "tools": [WEATHER_BRIEF]}
# Parallel calls, two results in a row, a second request and reasoning in the last turn.
TRAVEL = {"messages": AGENT, "tools": [WEATHER, SEARCH]}

DEFS = '{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parame...'
TRAVEL_DEFS = '{"type": "function", "function": {"name": "get_weather", "description": "Current weather o...'
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ROME = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
MUSEUM = '{"name": "search", "arguments": {"query": "museum Rome"}}'
QWEN_CALL_FORMAT = "'For each function call, return a json object with function name and arguments within <tool...'"

# A ▶ marks a line whose own tokens include trained labels: each assistant turn and the end of turn that closes it,
# never a prompt. A chat template's turns are named by their headers, `<|im_end|>` by its part ("end of turn").
QWEN_TRAVEL = f"""── Chunk 0 (shard 00000, row 0) {'─' * 30}
  no BOS (chat template)   trained: 100/512 tokens (19.5%)   segments: 1   padding: 128
  │ segment 1 at 0
    <system     > 'You are a travel assistant.  # Tools  You may call one or more functions to assist with th...'
        ├ tool defs   '{TRAVEL_DEFS}'
        └ text        {QWEN_CALL_FORMAT}
    <end of turn> ''
    <user       > 'Is it warm in Paris and Rome today?'
    <end of turn> ''
  ▶ <assistant  > ''
  ▶     ├ tool call   '{PARIS}'
  ▶     └ tool call   '{ROME}'
  ▶ <end of turn> ''
    <user       > ''
        ├ tool result '{{"temp": 21}}'
        └ tool result '{{"temp": 27}}'
    <end of turn> ''
  ▶ <assistant  > 'Rome is warmer (27 °C) than Paris (21 °C).'
  ▶ <end of turn> ''
    <user       > 'Find me a museum in Rome.'
    <end of turn> ''
  ▶ <assistant  > 'Searching.'
  ▶     └ tool call   '{MUSEUM}'
  ▶ <end of turn> ''
    <user       > ''
        └ tool result 'Vatican Museums; Borghese Gallery'
    <end of turn> ''
  ▶ <assistant  > ''
  ▶     ├ reasoning   'The user wants one.'
  ▶     └ text        'Try the Borghese Gallery.'
  ▶ <end of turn> ''
    <PAD        > × 128

✓ context before first trained label:
     role tokens seen : ['system', 'end of turn', 'user', 'end of turn', 'assistant']
     user context     : 'You are a travel assistant.\\n\\n# Tools\\n\\nYou may call one or more functions to assi'
     first prediction : '<tool_call>'
     ✓ full user turn visible before first trained token"""

QWEN_REASONED = f"""── Chunk 1 (shard 00000, row 1) {'─' * 30}
  no BOS (chat template)   trained: 49/512 tokens (9.6%)   segments: 1   padding: 302
  │ segment 1 at 0
    <system     > 'Be brief.  # Tools  You may call one or more functions to assist with the user query.  You...'
        ├ tool defs   '{DEFS}'
        └ text        {QWEN_CALL_FORMAT}
    <end of turn> ''
    <user       > 'Weather in Paris?'
    <end of turn> ''
  ▶ <assistant  > ''
  ▶     ├ reasoning   'Need the tool.'
  ▶     ├ text        'Let me check.'
  ▶     └ tool call   '{PARIS}'
  ▶ <end of turn> ''
    <user       > ''
        └ tool result '{{"temp": 21}}'
    <end of turn> ''
  ▶ <assistant  > ''
  ▶     ├ reasoning   'Read the tool result.'
  ▶     └ text        'It is 21 C.'
  ▶ <end of turn> ''
    <PAD        > × 302

✓ context before first trained label:
     role tokens seen : ['system', 'end of turn', 'user', 'end of turn', 'assistant']
     user context     : 'Be brief.\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user q'
     first prediction : '<think>'
     ✓ full user turn visible before first trained token"""

# The roles template ends an assistant's turn with the next role token, trained: that <USR> line has a ▶ and
# says that only its token is; no tool result or prompt text is trained.
ROLES_TRAVEL = f"""── Chunk 0 (shard 00000, row 0) {'─' * 30}
✓ starts at BOS : True   trained: 281/1024 tokens (27.4%)   segments: 1   padding: 248
  │ segment 1 at 0
    <BOS      > ''
    <SYS      > 'You are a travel assistant.\\n\\n# Tools'
        └ tool defs   '{TRAVEL_DEFS}'
    <USR      > 'Is it warm in Paris and Rome today?'
  ▶ <ASST     > ''
  ▶     ├ tool call   '{PARIS}'
  ▶     └ tool call   '{ROME}'
  ▶ <USR      > ''
        └ tool result '{{"temp": 21}}'
    <USR      > ''
        └ tool result '{{"temp": 27}}'
  ▶ <ASST     > 'Rome is warmer (27 °C) than Paris (21 °C).'
  ▶ <USR      > 'Find me a museum in Rome.'   (only the USR token is trained)
  ▶ <ASST     > 'Searching.'
  ▶     └ tool call   '{MUSEUM}'
  ▶ <USR      > ''
        └ tool result 'Vatican Museums; Borghese Gallery'
  ▶ <ASST     > ''
  ▶     ├ reasoning   'The user wants one.'
  ▶     └ text        'Try the Borghese Gallery.'
  ▶ <EOS      > ''
    <PAD      > × 248

✓ context before first trained label:
     role tokens seen : ['BOS', 'SYS', 'USR']
     user context     : 'You are a travel assistant.\\n\\n# Tools\\n\\n<tools>\\n{{"type": "function", "function": {{'
     first prediction : '<|assistant|>'
     ✓ full user turn visible before first trained token"""

ROLES_REASONED = f"""── Chunk 1 (shard 00000, row 1) {'─' * 30}
✓ starts at BOS : True   trained: 128/1024 tokens (12.5%)   segments: 1   padding: 691
  │ segment 1 at 0
    <BOS      > ''
    <SYS      > 'Be brief.\\n\\n# Tools'
        └ tool defs   '{DEFS}'
    <USR      > 'Weather in Paris?'
  ▶ <ASST     > ''
  ▶     ├ reasoning   'Need the tool.'
  ▶     ├ text        'Let me check.'
  ▶     └ tool call   '{PARIS}'
  ▶ <USR      > ''
        └ tool result '{{"temp": 21}}'
  ▶ <ASST     > ''
  ▶     ├ reasoning   'Read the tool result.'
  ▶     └ text        'It is 21 C.'
  ▶ <EOS      > ''
    <PAD      > × 691

✓ context before first trained label:
     role tokens seen : ['BOS', 'SYS', 'USR']
     user context     : 'Be brief.\\n\\n# Tools\\n\\n<tools>\\n{{"type": "function", "function": {{"name": "get_weath'
     first prediction : '<|assistant|>'
     ✓ full user turn visible before first trained token"""

SPAN = re.compile(r'<span class="t (\w+)(?: rl)?(?: (k-[\w-]+))?" title="[^"]*">(.*?)</span>', re.S)
ARTICLE = re.compile(r'<article class="chunk" id="chunk-(\d+)">(.*?)</article>', re.S)


def run(*args: str, color: bool = False) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), color=color)
    return result.exit_code, result.output


def pack_records(root: Path, *flags: str) -> Path:
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in (REASONED, TRAVEL)))
    code, output = run("pack", str(data), str(root / "out"), "-q", *flags)
    assert code == 0, output
    return root / "out"


@pytest.fixture(scope="module")
def qwen_out(tmp_path_factory, qwen3_dir) -> Path:
    root = tmp_path_factory.mktemp("qwen-agentic")
    return pack_records(root, "--tokenizer", str(qwen3_dir), "--template", "chat", "--seq-length", "512")


@pytest.fixture(scope="module")
def roles_out(tmp_path_factory, demo_tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("roles-agentic")
    return pack_records(root, "--tokenizer", str(demo_tokenizer_dir), "--seq-length", "1024")


@pytest.fixture(scope="module")
def demo(demo_tokenizer_dir):
    return load_tokenizer(str(demo_tokenizer_dir))


# --- inspect -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [
    ("chat", [QWEN_TRAVEL, QWEN_REASONED]), ("roles", [ROLES_TRAVEL, ROLES_REASONED])])
@pytest.mark.slow
def test_inspect_splits_turns_into_kinds(request, template, expected):
    out = request.getfixturevalue("qwen_out" if template == "chat" else "roles_out")
    for index, view in enumerate(expected):
        code, output = run("inspect", str(out), "--chunk", str(index))
        assert code == 0, output
        assert output == view + "\n\n"  # the command prints a blank line after each chunk
    code, coloured = run("inspect", str(out), "--chunk", "1", "--color", color=True)
    assert click.unstyle(coloured) == expected[1] + "\n\n"
    assert click.style("  ▶     ├ reasoning   'Need the tool.'", fg="green") in coloured
    assert click.style("        └ tool result '{\"temp\": 21}'", dim=True) in coloured


def view(tokenizer, ids: list[int], trained: np.ndarray | None = None) -> list[tuple]:
    trained = np.zeros(len(ids), bool) if trained is None else trained
    return [(s.role, s.text, [(p.kind, p.text, p.trained) for p in s.parts])
            for s in sections(np.array(ids), trained, tokenizer)]


def test_a_chunk_may_start_inside_a_part(demo):
    """Linear packing cuts anywhere: text up to a close marker that starts a line, before any open one, is that part."""
    ids = demo.hf.encode("the tool.\n</think>\n\nIt is.") + [demo.eos_id]
    assert view(demo, ids) == [("[MID-CONV]", "", [("reasoning", "the tool.", False), ("text", "It is.", False)]),
                               ("EOS", "", [])]
    # Prose that names a close marker inside a line is not the end of a part.
    ids = demo.hf.encode("within <tools></tools> tags:\n<tools>\n{}\n</tools>")
    assert view(demo, ids) == [("[MID-CONV]", "within <tools></tools> tags:", [("tool defs", "{}", False)])]


@pytest.mark.slow
def test_qwen3_chunk_starting_inside_reasoning(qwen_out):
    output = PackedOutput(qwen_out)
    tokenizer = tokenizer_for(output)
    row = output.row(1)
    at = [tokenizer.hf.decode([t]) for t in row.tokens.tolist()].index("Need")
    ids, trained = row.tokens[at:].tolist(), trained_tokens(row.loss_mask)[at:]
    assert view(tokenizer, ids, trained)[0] == ("[MID-CONV]", "", [
        ("reasoning", "Need the tool.", True), ("text", "Let me check.", True), ("tool call", PARIS, True)])


def test_a_part_cut_by_the_chunk_end_runs_to_it(demo):
    ids = [demo.role_ids["assistant"]] + demo.hf.encode("<think>\nStill thinking")
    assert view(demo, ids) == [("ASST", "", [("reasoning", "Still thinking", False)])]


def test_markers_count_only_where_a_turn_can_hold_them(demo):
    # Qwen3's system prompt describes the call format with <tool_call> blocks: that is text, not a call.
    system = "Tools within <tools></tools> tags:\n<tools>\n{}\n</tools>\nCall as:\n<tool_call>\n{}\n</tool_call>"
    ids = [demo.role_ids["system"]] + demo.hf.encode(system)
    assert view(demo, ids) == [("SYS", "Tools within <tools></tools> tags:", [
        ("tool defs", "{}", False), ("text", "Call as:\n<tool_call>\n{}\n</tool_call>", False)])]
    # A user who writes <think> is not reasoning; the section prints as it always did.
    ids = [demo.role_ids["user"]] + demo.hf.encode("<think>\nx\n</think>")
    assert view(demo, ids) == [("USR", "<think>\nx\n</think>", [])]


def test_data_without_markers_has_no_parts(demo_tokenizer_dir, tmp_path):
    """Every section of plain data prints the one line it printed before kinds existed."""
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy="linear", seq_length=256)
    output = PackedOutput(run_pack(DATA_DIR, tmp_path / "out", config, quiet=True).out_dir)
    tokenizer = tokenizer_for(output)
    for index in range(len(output)):
        row = output.row(index)
        assert all(not s.parts for s in sections(row.tokens, trained_tokens(row.loss_mask), tokenizer))
    assert "├" not in render_chunk(output, 0, tokenizer) and "└" not in render_chunk(output, 0, tokenizer)


# --- report --------------------------------------------------------------------------------------


def kind_runs(body: str) -> list[tuple[str, set[str], str]]:
    """(kind class, train flags, text) of each run of adjacent tokens of one kind in a chunk view."""
    runs: list[tuple[str, set[str], str]] = []
    last = ""
    for flag, kind, shown in SPAN.findall(body):
        if kind:
            text = html.unescape(shown).replace("↵\n", "\n")
            if kind == last:
                runs[-1][1].add(flag)
                runs[-1] = (kind, runs[-1][1], runs[-1][2] + text)
            else:
                runs.append((kind, {flag}, text))
        last = kind
    return runs


QWEN_RUNS = [
    ("k-tools", {"ms"}, f'<tools>\n{json.dumps(WEATHER_BRIEF)}\n</tools>\n\n'),
    ("k-think", {"tr"}, "<think>\nNeed the tool.\n</think>"),
    ("k-call", {"tr"}, f"<tool_call>\n{PARIS}\n</tool_call>"),
    ("k-result", {"ms"}, '<tool_response>\n{"temp": 21}\n</tool_response>'),
    ("k-think", {"tr"}, "<think>\nRead the tool result.\n</think>"),
]
ROLES_RUNS = [("k-tools", {"ms"}, f'<tools>\n{json.dumps(WEATHER_BRIEF)}\n</tools>'), *QWEN_RUNS[1:]]


@pytest.mark.slow
@pytest.mark.parametrize(("template", "expected"), [("chat", QWEN_RUNS), ("roles", ROLES_RUNS)])
def test_report_marks_the_kinds(request, tmp_path, template, expected):
    out = request.getfixturevalue("qwen_out" if template == "chat" else "roles_out")
    page = write_report(out, tmp_path / "r.html").read_text()
    bodies = dict(ARTICLE.findall(page))
    assert kind_runs(bodies["1"]) == expected
    assert [(kind, flags) for kind, flags, _ in kind_runs(bodies["0"])] == [
        ("k-tools", {"ms"}), ("k-call", {"tr"}), ("k-call", {"tr"}), ("k-result", {"ms"}), ("k-result", {"ms"}),
        ("k-call", {"tr"}), ("k-result", {"ms"}), ("k-think", {"tr"})]
    assert re.search(r'title="id \d+ · pos \d+ · masked · tool result">', bodies["1"])
    for kind, name in [("k-think", "reasoning"), ("k-call", "tool call"), ("k-result", "tool result"),
                       ("k-tools", "tool definitions")]:
        assert f'<span class="t ms {kind}">{name}</span>' in page  # the legend
        assert re.search(rf"\.{kind} {{ box-shadow: inset 0 -3px 0 #[0-9a-f]{{6}}; }}", page)


def test_every_kind_has_a_class():
    assert KIND_CLASSES.keys() == KIND_MARKERS.keys() and len(set(KIND_CLASSES.values())) == len(KIND_CLASSES)


def test_plain_report_has_no_kinds(demo_tokenizer_dir, tmp_path):
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), strategy="bestfit", seq_length=512)
    out = run_pack(DATA_DIR, tmp_path / "out", config, quiet=True).out_dir
    page = write_report(out, tmp_path / "r.html").read_text()
    assert all(" k-" not in body for _, body in ARTICLE.findall(page))
