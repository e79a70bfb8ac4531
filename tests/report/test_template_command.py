"""`packsft template TOKENIZER`: what a chat template trains, seen before packing (issue 27, item 6). Exact
expectations on the hermetic ChatML tokenizer; real templates from ../shared/templates on the Qwen3 tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft.cli import main
from packsft.render.tokenizer import read_chat_template
from packsft.report.template import (
    EXAMPLES,
    describe_template,
    format_template_report,
    load_template_tokenizer,
)
from packsft.report.template_fields import template_fields
from tests.helpers import CHATML, THINKING

HEADER = """\
chat template of {name} (sha256 {sha})
  generation prompt: '<|im_start|>assistant\\n' (what add_generation_prompt=True appends)
  stop tokens: '<|im_end|>' ({eos})
  reads: message fields content, role; tools no; kwargs none
  history: a plain earlier turn is shown as the model generates it
  trained text is between [[ and ]]
"""
MULTI_TURN = """\
── multi-turn ──────────────────────────────────────────────────
<|im_start|>user
Hi<|im_end|>
<|im_start|>assistant
[[Hello.<|im_end|>]]
<|im_start|>user
Bye<|im_end|>
<|im_start|>assistant
[[Goodbye.<|im_end|>]]

  trained 13 of 46 tokens; trained runs end with '<|im_end|>', '<|im_end|>'
  prefixes: stable (each messages[:i] renders as a prefix of the whole)
"""


def run(*args: str):
    return CliRunner().invoke(main, ["template", *args])


@pytest.fixture(scope="module")
def chatml_report(chatml_dir):
    return describe_template(load_template_tokenizer(str(chatml_dir)))


def test_the_text_shows_each_shape_with_its_trained_runs(chatml_dir, chatml_report):
    result = run(str(chatml_dir), "--no-color")
    assert result.exit_code == 0, result.output
    tokenizer = load_template_tokenizer(str(chatml_dir))
    assert result.output.startswith(HEADER.format(name=chatml_dir, sha=chatml_report.chat_template_sha256[:12],
                                                  eos=tokenizer.eos_id))
    assert MULTI_TURN in result.output
    assert [example.shape for example in chatml_report.examples] == list(EXAMPLES)
    # ChatML renders no reasoning field and no tool calls: the report says what is lost.
    reasoning = next(e for e in chatml_report.examples if e.shape == "reasoning_content")
    assert reasoning.text.endswith("<|im_start|>assistant\n4.<|im_end|>\n") and reasoning.reasoning_tokens_dropped > 0
    assert f"  reasoning: {reasoning.reasoning_tokens_dropped} tokens of the record's reasoning are not rendered" \
        in result.output
    call = next(e for e in chatml_report.examples if e.shape == "tool call")
    assert "[[<|im_end|>]]\n<|im_start|>tool" in format_template_report(chatml_report)  # the call itself is gone
    assert call.run_ends == ["<|im_end|>", "<|im_end|>"]


def test_trained_text_is_green_with_color(chatml_dir):
    result = run(str(chatml_dir), "--color")
    assert "<|im_start|>assistant\n\x1b[32mHello.<|im_end|>\x1b[0m\n" in result.output
    assert "[[" not in result.output


def test_json_gives_the_same_facts(chatml_dir, chatml_report):
    result = run(str(chatml_dir), "--json")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts == json.loads(json.dumps(chatml_report.to_dict()))
    assert facts["generation_prompt"] == "<|im_start|>assistant\n"
    assert facts["fields"] == {"message_fields": ["content", "role"], "reads_tools": False, "kwargs": []}
    assert facts["history"] == {"plain_turns_rewritten": False, "thinking_off_keeps_history": False}
    plain = facts["examples"][0]
    assert plain["text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    assert [plain["text"][a:b] for a, b in plain["trained"]] == ["Hello.<|im_end|>"]
    assert (plain["unstable_prefixes"], plain["refused_prefixes"], plain["error"]) == ([], [], None)


def test_a_rewriting_template_shows_its_rewrite_and_the_kwarg_that_undoes_it(chatml_dir, tmp_path):
    path = tmp_path / "thinking.jinja"
    path.write_text(THINKING, encoding="utf-8")
    result = run(str(chatml_dir), "--chat-template", str(path), "--no-color")
    assert result.exit_code == 0, result.output
    assert f"(sha256 {read_chat_template(path).sha256[:12]}, from {path})" in result.output
    assert "  reads: message fields content, role; tools no; kwargs enable_thinking\n" in result.output
    assert ("  history: a plain earlier turn is shown otherwise than generated; with --template-kwargs "
            "'{\"enable_thinking\": false}' as generated\n") in result.output
    multi = result.output.split("── multi-turn")[1].split("── tool call")[0]
    assert "[[Hello.<|im_end|>]]" in multi and "[[<think>\n\n</think>\n\nGoodbye.<|im_end|>]]" in multi
    assert "  history: shown otherwise than generated when not the last turn: message 1\n" in multi
    assert "  prefixes: messages[:i] renders as no prefix of the whole for i = 2\n" in multi
    off = run(str(chatml_dir), "--chat-template", str(path), "--template-kwargs", '{"enable_thinking": false}', "--json")
    assert json.loads(off.output)["generation_prompt"] == "<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("name", ["one.json", "one.jsonl"])
def test_example_shows_the_users_own_record_in_any_shape(chatml_dir, tmp_path, name):
    record = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
              "system": "Be brief."}
    path = tmp_path / name
    path.write_text(json.dumps(record) + "\n" + ("" if name.endswith(".json") else json.dumps(record) + "\n"))
    result = run(str(chatml_dir), "--example", str(path), "--no-color")
    assert result.exit_code == 0, result.output
    own = result.output.split("── --example (sharegpt) ")[1]
    assert own.split("\n", 1)[1].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>"
                                             "\n<|im_start|>assistant\n[[Hello.<|im_end|>]]\n")


def test_errors_name_the_fix(chatml_dir, demo_tokenizer_dir, tmp_path):
    result = run(str(demo_tokenizer_dir))
    assert result.exit_code == 1
    assert result.output == (f"Error: tokenizer {str(demo_tokenizer_dir)!r} has no chat template, so there is nothing "
                             "to show; pass --chat-template FILE\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"text": "a document"}')
    assert run(str(chatml_dir), "--example", str(bad)).output == (
        f"Error: --example {bad}: not a record with 'messages', 'conversations', 'prompt' and 'completion', "
        "or 'instruction' and 'output'\n")
    assert run(str(chatml_dir), "--example", str(tmp_path / "none.json")).output.startswith(
        f"Error: --example {tmp_path / 'none.json'}: cannot be read")


def test_template_fields_reads_fields_tools_and_kwargs():
    source = ("{% set first = messages[0] %}{{ first.role }}{% for m in messages[1:] %}{% if m.tool_calls %}"
              "{% for call in m.tool_calls %}{{ call.function.name }}{% endfor %}{% endif %}"
              "{{ m['reasoning_content'] }}{% if 'thinking' in m %}{{ m.get('tool_call_id') }}{% endif %}{% endfor %}"
              "{% if tools %}{{ tools | tojson }}{% endif %}{% if not style is defined %}{% set style = 'x' %}"
              "{% endif %}{% if enable_thinking %}{{ bos_token }}{% endif %}{{ raise_exception('no') if false }}")
    fields = template_fields(source, ("bos_token",))
    assert fields.message_fields == ("reasoning_content", "role", "thinking", "tool_call_id", "tool_calls")
    assert fields.reads_tools
    assert fields.kwargs == ("enable_thinking", "style")
    assert template_fields(CHATML).to_dict() == {"message_fields": ["content", "role"], "reads_tools": False,
                                                  "kwargs": []}


def qwen3_with(template: str, qwen3_dir: Path, tmp_path: Path) -> Path:
    """The Qwen3 tokenizer with a real family's template (../shared/templates), saved to a folder."""
    from transformers import AutoTokenizer

    path = qwen3_dir.parents[1] / "templates" / template  # ../shared/templates
    if not path.exists():
        pytest.skip(f"the {template} template not found at {path} (the shared assets are only in the developer "
                    "checkout and CI)")
    hf = AutoTokenizer.from_pretrained(qwen3_dir)
    hf.chat_template = path.read_text(encoding="utf-8")
    hf.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_qwen3_template_reads_reasoning_and_rewrites_plain_history(qwen3_dir, tmp_path):
    folder = qwen3_with("Qwen-Qwen3-0.6B.jinja", qwen3_dir, tmp_path)
    facts = json.loads(run(str(folder), "--json").output)
    assert facts["fields"] == {"message_fields": ["content", "reasoning_content", "role", "tool_calls"],
                               "reads_tools": True, "kwargs": ["enable_thinking"]}
    assert facts["history"] == {"plain_turns_rewritten": True, "thinking_off_keeps_history": True}
    shapes = {example["shape"]: example for example in facts["examples"]}
    assert shapes["multi-turn"]["rewritten_turns"] == [1] and shapes["multi-turn"]["unstable_prefixes"] == [2]
    reasoning = shapes["reasoning_content"]
    assert [reasoning["text"][a:b] for a, b in reasoning["trained"]] == [
        "<think>\nTwo and two make four.\n</think>\n\n4.<|im_end|>"]
    assert all(example["run_ends"] == ["<|im_end|>"] * len(example["trained"]) for example in facts["examples"])


def test_qwen25_template_keeps_history_and_every_prefix(qwen3_dir, tmp_path):
    report = describe_template(load_template_tokenizer(str(qwen3_with("Qwen-Qwen2.5-7B-Instruct.jinja", qwen3_dir,
                                                                          tmp_path))))
    assert report.fields == {"message_fields": ["content", "role", "tool_calls"], "reads_tools": True, "kwargs": []}
    assert report.history == {"plain_turns_rewritten": False, "thinking_off_keeps_history": False}
    assert all(not e.unstable_prefixes and not e.refused_prefixes and not e.rewritten_turns for e in report.examples)
    call = next(e for e in report.examples if e.shape == "tool call")
    assert [call.text[a:b] for a, b in call.trained] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "21 °C.<|im_end|>"]
