"""The summary's advice on turns a chat template rewrites in history (issue 27, item 7): `enable_thinking: false`
named only where it removes the rewrite (checked on the template), and the row cost of `--turns inference` given
before it is recommended (an estimate) and after such a run (measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from packsft import load_tokenizer
from packsft.cli import main
from packsft.render.tokenizer import ChatTemplateFile
from packsft.report.template import history_rewrites
from packsft.stats import warnings
from tests.helpers import THINKING, conv, write_conversations

# Rewrites history whatever the kwargs: the earlier turns lose their text.
FORGETFUL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and not loop.last %}...{% else %}{{ m.content }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ADVICE = ("; for conversations without reasoning, --template-kwargs '{\"enable_thinking\": false}' makes this template "
          "show earlier turns as generated (no extra rows; a record's own chat_template_kwargs win)")
SUMMARY = {"chunks": 10, "seq_length": 99, "fill": 0.5, "conversations_packed": 40, "tokens_rendered": 8000,
           "trained_tokens_kept": 100, "trained_unprompted": 0, "conversations_truncated": 0,
           "turns_rewritten_in_history": 30, "reasoning_tokens_dropped": 0}


def tokenizer_with(chatml_dir: Path, tmp_path: Path, text: str):
    path = tmp_path / "template.jinja"
    path.write_text(text, encoding="utf-8")
    return load_tokenizer(str(chatml_dir), "chat", chat_template=ChatTemplateFile(str(path), text))


@pytest.mark.parametrize(("template", "kwargs", "expected"), [
    (None, None, {"plain_turns_rewritten": False, "thinking_off_keeps_history": False}),
    (THINKING, None, {"plain_turns_rewritten": True, "thinking_off_keeps_history": True}),
    (THINKING, {"enable_thinking": False}, {"plain_turns_rewritten": False, "thinking_off_keeps_history": False}),
    (FORGETFUL, None, {"plain_turns_rewritten": True, "thinking_off_keeps_history": False}),
])
def test_history_rewrites_renders_a_plain_conversation_both_ways(chatml_dir, tmp_path, template, kwargs, expected):
    tokenizer = tokenizer_with(chatml_dir, tmp_path, template) if template else load_tokenizer(str(chatml_dir), "chat")
    assert history_rewrites(tokenizer, kwargs) == expected


def test_qwen3_keeps_plain_history_with_thinking_off(qwen3_dir):
    assert history_rewrites(load_tokenizer(str(qwen3_dir), "chat")) == {
        "plain_turns_rewritten": True, "thinking_off_keeps_history": True}


def test_the_warning_names_thinking_off_only_where_it_removes_the_rewrite_and_estimates_the_cost():
    cost = ("; --turns inference trains each as generated, at about 3,000 more tokens, ~60 more rows than the 10, "
            "+600% (an estimate from the mean conversation length, low where the conversations with rewritten turns "
            "are longer than the mean; after such a run, stats give inference_context_tokens)")
    base = ("30 trained assistant turns are rendered otherwise when they are not the last turn, and 0 reasoning "
            "tokens are left out by the chat template: those turns are trained as the template shows them in history, "
            "not as the model generates them")
    assert warnings(SUMMARY, {}, {"plain_turns_rewritten": True, "thinking_off_keeps_history": True}) == [
        base + ADVICE + cost]
    assert warnings(SUMMARY, {}, {"plain_turns_rewritten": True, "thinking_off_keeps_history": False}) == [base + cost]
    assert warnings(SUMMARY, {}) == [base + cost]


def test_after_an_inference_run_the_warning_gives_the_measured_rows():
    summary = {**SUMMARY, "turns_rewritten_in_history": 0, "inference_renderings_added": 30,
               "inference_context_tokens": 2500}
    assert warnings(summary, {}) == ["--turns inference added 30 renderings with 2,500 tokens of repeated context "
                                     "(~50 of the 10 rows)"]


@pytest.fixture
def data(tmp_path) -> Path:
    records = [conv(("user", f"Question {i}?"), ("assistant", f"Answer {i}."), ("user", "And?"),
                    ("assistant", "That is all.")) for i in range(4)]
    return write_conversations(tmp_path / "data" / "a.parquet", records).parent


def pack(data: Path, out: Path, tokenizer: Path, template: Path, *extra: str):
    return CliRunner().invoke(main, ["pack", str(data), str(out), "--tokenizer", str(tokenizer), "--chat-template",
                                     str(template), "--seq-length", "64", *extra])


def test_a_pack_records_the_template_fact_and_its_summary_gives_the_advice(data, tmp_path, chatml_dir):
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING, encoding="utf-8")
    result = pack(data, tmp_path / "out", chatml_dir, template)
    assert result.exit_code == 0, result.output
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["chat_history"] == {"plain_turns_rewritten": True, "thinking_off_keeps_history": True}
    assert dataset["stats"]["turns_rewritten_in_history"] == 4
    assert ADVICE in result.output and "--turns inference trains each as generated, at about" in result.output
    # With the advice taken, nothing is rewritten and nothing is advised.
    result = pack(data, tmp_path / "off", chatml_dir, template, "--template-kwargs", '{"enable_thinking": false}')
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "off" / "dataset.json").read_text())["stats"]["turns_rewritten_in_history"] == 0
    assert "rendered otherwise" not in result.output
    assert json.loads((tmp_path / "off" / "dataset.json").read_text())["chat_history"] == {
        "plain_turns_rewritten": False, "thinking_off_keeps_history": False}
