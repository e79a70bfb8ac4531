"""`--template chat` on agentic and reasoning records: tools, tool calls, tool results, reasoning, template kwargs.

The reference is transformers itself: the ids must equal `apply_chat_template(messages, tools=tools, **kwargs)`
token for token, and an assistant turn trains exactly what follows its generation prompt
(`apply_chat_template(messages[:k], add_generation_prompt=True)`) through its end-of-turn. Records hold no
special-token strings here (those are plain text in packsft; tests/verify/test_fidelity.py covers them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packsft import PackConfig, load_tokenizer
from packsft.errors import UnusableOutputError
from packsft.read.records import ASSISTANT, ChatExtras, Conversation
from packsft.render.chat import ChatRenderer, render_chat
from packsft.run import run_pack
from tests.helpers import AGENT, SEARCH, WEATHER, assert_output_verifies, call, record


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return load_tokenizer(str(qwen3_dir), "chat", encoder="auto")


def hf_ids(tokenizer, rec: Conversation, prefix: int | None = None, prompt: bool = False) -> list[int]:
    messages = rec.chat_messages()[:prefix]
    out = tokenizer.hf.apply_chat_template(messages, tools=rec.tools, add_generation_prompt=prompt, tokenize=True,
                                           **rec.template_kwargs())
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def generated_turns(tokenizer, rec: Conversation) -> dict[int, list[int]]:
    """Per assistant turn whose prompt `apply_chat_template` renders as a prefix of the whole conversation: the
    positions a model generates there, from the end of the prompt through the end-of-turn token."""
    full = hf_ids(tokenizer, rec)
    end_of_turn = tokenizer.backend.token_to_id("<|im_end|>")
    out = {}
    for k, (role, _) in enumerate(rec.messages):
        if role != ASSISTANT or not rec.trains(k):
            continue
        prompt = hf_ids(tokenizer, rec, k, prompt=True) if k else None
        if prompt is None or full[: len(prompt)] != prompt:
            continue  # the template renders the history before turn k otherwise (Qwen3 drops reasoning there)
        stop = full.index(end_of_turn, len(prompt))
        out[k] = list(range(len(prompt), stop + 1))
    return out


def test_tool_calling_record_renders_as_apply_chat_template_and_trains_what_the_model_generates(qwen3):
    rec = record(AGENT, tools=[WEATHER, SEARCH])
    batch = render_chat([rec], qwen3)
    assert batch.ids.tolist() == hf_ids(qwen3, rec)
    trained = np.flatnonzero(batch.flags).tolist()
    turns = generated_turns(qwen3, rec)
    assert set(turns) == {2, 5, 7, 9}
    assert trained == sorted(p for positions in turns.values() for p in positions)
    text = qwen3.hf.decode(batch.ids[batch.flags == 1].tolist())
    # Calls and reasoning train; the tools block, user requests and tool results never do.
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in text and "The user wants one." in text
    for untrained in ("# Tools", "Is it warm", '{"temp": 21}', "Vatican Museums", "<|im_start|>assistant"):
        assert untrained not in text


def test_template_kwargs_change_the_rendering_and_the_mask_exactly_as_in_hf(qwen3):
    """enable_thinking=False: qwen3's generation prompt holds the empty think block, so it is prompt, not trained."""
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    thinking, plain = record(messages), record(messages, kwargs={"enable_thinking": False})
    on, off = render_chat([thinking], qwen3), render_chat([plain], qwen3)
    assert on.ids.tolist() == hf_ids(qwen3, thinking) and off.ids.tolist() == hf_ids(qwen3, plain)
    assert qwen3.hf.decode(on.ids[on.flags == 1].tolist()) == "<think>\n\n</think>\n\n4<|im_end|>"
    assert qwen3.hf.decode(off.ids[off.flags == 1].tolist()) == "4<|im_end|>"
    # --template-kwargs sets them for every record; the record's own win.
    renderer = ChatRenderer(qwen3, template_kwargs={"enable_thinking": False})
    assert render_chat([thinking], qwen3, renderer=renderer).flags.sum() == off.flags.sum()
    own = record(messages, kwargs={"enable_thinking": True})
    assert render_chat([own], qwen3, renderer=renderer).flags.sum() == on.flags.sum()


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_reasoning_inside_content_is_rendered_as_qwen3_does(qwen3, turns):
    """`<think>` in content (OpenThoughts, SmolTalk2 think subsets): qwen3 moves it out of the content, keeps it in
    the last turn and drops it from earlier ones; nothing is rejected as "cannot be located"."""
    messages = []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {t}?"},
                     {"role": "assistant", "content": f"<think>\nStep {t}.\n</think>\n\nAnswer {t}."}]
    rec = record(messages)
    renderer = ChatRenderer(qwen3)
    batch = render_chat([rec], qwen3, renderer=renderer)
    assert batch.ids.tolist() == hf_ids(qwen3, rec)
    text = qwen3.hf.decode(batch.ids[batch.flags == 1].tolist())
    assert f"<think>\nStep {turns - 1}.\n</think>\n\nAnswer {turns - 1}.<|im_end|>" in text
    assert all(f"Step {t}." not in text for t in range(turns - 1))  # dropped by the template from history
    assert (renderer.counts.reasoning_tokens_dropped > 0) == (turns > 1)
    assert renderer.counts.turns_rewritten_in_history == turns - 1


def test_weight_zero_and_prompt_completion_train_only_what_they_should(qwen3):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    batch = render_chat([record(messages)], qwen3)
    assert qwen3.hf.decode(batch.ids[batch.flags == 1].tolist()) == "<think>\n\n</think>\n\nd<|im_end|>"
    # Text prompt-completion: the prompt is context, the completion and EOS train.
    rec = Conversation((("text", "The capital of France is"), ("text", " Paris.")), extras=ChatExtras(
        (None, None), (False, None)))
    text = render_chat([rec], qwen3)
    assert qwen3.hf.decode(text.ids[text.flags == 1].tolist()) == " Paris.<|im_end|>"


def test_turns_inference_trains_each_rewritten_turn_as_generated_and_last_trains_only_the_last(qwen3):
    rec = record(AGENT[:6], tools=[WEATHER])  # two assistant turns after the query: the first is rewritten
    renderer = ChatRenderer(qwen3)
    expanded = renderer.for_turns([rec], "inference")
    assert len(expanded) == 2 and renderer.counts.inference_renderings_added == 1
    batch = render_chat(expanded, qwen3, renderer=renderer)
    assert renderer.counts.turns_rewritten_in_history == 0  # none is trained in a rewritten form any more
    first = batch.ids[batch.conv_offsets[1]:batch.conv_offsets[2]]
    first_flags = batch.flags[batch.conv_offsets[1]:batch.conv_offsets[2]]
    prefix = record(AGENT[:3], tools=[WEATHER])
    assert first.tolist() == hf_ids(qwen3, prefix)  # the turn as the last message, as at inference
    assert qwen3.hf.decode(first[first_flags == 1].tolist()).startswith("<think>\n\n</think>\n\n<tool_call>")
    assert renderer.counts.inference_context_tokens > 0
    last = render_chat(ChatRenderer(qwen3).for_turns([rec], "last"), qwen3)
    assert qwen3.hf.decode(last.ids[last.flags == 1].tolist()).endswith("than Paris (21 °C).<|im_end|>")
    assert "tool_call" not in qwen3.hf.decode(last.ids[last.flags == 1].tolist())


def test_only_the_renderings_turns_inference_added_are_laid_out_and_counted_as_prompted(qwen3):
    renderer = ChatRenderer(qwen3)
    rec = record(AGENT[:6], tools=[WEATHER])
    for _ in range(3):  # each expansion is freed after it renders: its records' addresses are free again
        render_chat(renderer.for_turns([rec], "inference"), qwen3, renderer=renderer)
    counted = renderer.counts.inference_context_tokens
    assert counted > 0
    # Records read later (new objects, often at those addresses) are laid out and counted as themselves.
    later = [record(AGENT[:3], tools=[WEATHER]) for _ in range(200)]
    batch = render_chat(later, qwen3, renderer=renderer)
    assert renderer.counts.inference_context_tokens == counted
    assert batch.ids[batch.conv_offsets[0]:batch.conv_offsets[1]].tolist() == hf_ids(qwen3, later[0])


def test_a_record_analysed_itself_keeps_its_turns_apart_where_contents_repeat(qwen3):
    """Reasoning of only a newline (qwen3 strips it, so the record's skeleton does not reproduce it and the record is
    analysed itself), an empty tool result, and an assistant content equal to the next tool result's."""
    c = call("get_weather", '{"city": "x"}', "c0")
    rec = record([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [c]},
                  {"role": "tool", "content": "", "tool_call_id": "c0"},
                  {"role": "assistant", "content": "1", "tool_calls": [c]},
                  {"role": "tool", "content": "1", "tool_call_id": "c0"},
                  {"role": "assistant", "content": "", "reasoning_content": "\n"}])
    batch = render_chat([rec], qwen3)
    assert batch.ids.tolist() == hf_ids(qwen3, rec)
    turns = generated_turns(qwen3, rec)
    assert set(turns) == {1, 3, 5}
    assert np.flatnonzero(batch.flags).tolist() == sorted(p for positions in turns.values() for p in positions)


# -- property: random tool conversations ----------------------------------------------------------------------
words = st.text(st.sampled_from("abc xyz 123\n{}\":,é中"), min_size=0, max_size=12)


@st.composite
def tool_records(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(words)})
    for _ in range(draw(st.integers(1, 2))):
        messages.append({"role": "user", "content": draw(words) or "q"})
        for _ in range(draw(st.integers(0, 2))):
            calls = [call(draw(st.sampled_from(["get_weather", "search"])),
                          draw(st.sampled_from(['{"city": "x"}', {"query": "y", "top": 2}, "{}"])), f"c{i}")
                     for i in range(draw(st.integers(1, 2)))]
            messages.append({"role": "assistant", "content": draw(words), "tool_calls": calls})
            messages += [{"role": "tool", "content": draw(words), "tool_call_id": c["id"]} for c in calls]
        final = {"role": "assistant", "content": draw(words)}
        if draw(st.booleans()):
            final["reasoning_content"] = draw(words) or "r"
        messages.append(final)
    tools = draw(st.sampled_from([None, [WEATHER], [WEATHER, SEARCH]]))
    kwargs = draw(st.sampled_from([None, {"enable_thinking": False}]))
    return record(messages, tools, kwargs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=tool_records())
def test_random_tool_conversations_render_and_mask_as_hf(qwen3, rec):
    batch = render_chat([rec], qwen3)
    assert batch.ids.tolist() == hf_ids(qwen3, rec)
    trained = set(np.flatnonzero(batch.flags).tolist())
    for k, positions in generated_turns(qwen3, rec).items():
        assert set(positions) <= trained | {0}, k
    # Nothing outside an assistant turn trains: every trained token lies between an assistant header and its end.
    ids = batch.ids.tolist()
    start, end_of_turn = qwen3.backend.token_to_id("<|im_start|>"), qwen3.backend.token_to_id("<|im_end|>")
    assistant = qwen3.backend.token_to_id("assistant")
    inside, allowed = False, set()
    for i, token in enumerate(ids):
        if token == start:
            inside = i + 1 < len(ids) and ids[i + 1] == assistant
        elif inside:
            allowed.add(i)
            if token == end_of_turn:
                inside = False
    assert trained <= allowed


@pytest.mark.slow
@pytest.mark.parametrize("turns", ["rendered", "last", "inference"])
def test_agentic_records_pack_from_the_cli_and_verify(tmp_path, qwen3_dir, turns):
    """A JSON Lines file of tool-calling records with tools, template kwargs and a weight-0 turn packs, splits
    and verifies (--deep re-renders them with their tools and kwargs), under every --turns."""
    data = tmp_path / "data"
    data.mkdir()
    context_only = [dict(message, weight=0) if i == 5 else message for i, message in enumerate(AGENT)]
    rows = [{"messages": AGENT, "tools": [WEATHER, SEARCH]},
            {"messages": AGENT[:6], "tools": json.dumps([WEATHER]), "chat_template_kwargs": {"enable_thinking": False}},
            {"messages": context_only, "tools": [WEATHER, SEARCH]},
            {"messages": [{"role": "user", "content": "hi " * 400}, {"role": "assistant", "content": "yo " * 400}]}]
    (data / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows * 3))
    config = PackConfig(tokenizer=str(qwen3_dir), template="chat", seq_length=256, turns=turns)
    result = run_pack(data, tmp_path / "out", config, quiet=True)
    stats = result.dataset["stats"]
    assert stats["records_rejected"] == 0 and stats["trained_retention"] == 1.0
    assert stats["conversations_packed"] == 12 + (stats["inference_renderings_added"] or 0)
    assert (stats["turns_rewritten_in_history"] > 0) == (turns == "rendered")
    assert (stats["inference_renderings_added"] > 0) == (turns == "inference")
    assert_output_verifies(tmp_path / "out", deep=True)


@pytest.mark.slow
def test_records_the_template_refuses_are_counted_once(tmp_path, chatml_dir):
    """40 records a template raises on: '40 records read, 40 rejected', each with the template's own message
    (rendering rejects were counted twice in records_validated, which also skewed --max-reject-fraction)."""
    folder = tmp_path / "tok"
    shutil.copytree(chatml_dir, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": "a"}]} for i in range(40)]
    (data / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UnusableOutputError, match=r"nothing packed \(0 chunks\): 40 records read, 40 rejected "
                                                  r"\(chat template refused the conversation: System role not supported: 40\)"):
        run_pack(data, tmp_path / "out", PackConfig(tokenizer=str(folder), template="chat", seq_length=64), quiet=True)


def test_a_tool_result_with_no_call_before_it_packs_as_the_template_renders_it(qwen3):
    rec = record([{"role": "user", "content": "Run it."}, {"role": "tool", "content": "done"},
                  {"role": "assistant", "content": "It ran."}])
    batch = render_chat([rec], qwen3)
    assert batch.ids.tolist() == hf_ids(qwen3, rec)
    assert qwen3.hf.decode(batch.ids[batch.flags == 1].tolist()) == "<think>\n\n</think>\n\nIt ran.<|im_end|>"


@pytest.mark.slow
def test_the_chat_path_without_jinja2_fails_at_start_naming_the_install(tmp_path, chatml_dir):
    """jinja2 is declared (transformers renders templates with it but does not install it); where it is missing,
    `pack --template chat` stops before reading a record, naming the pip install, instead of rejecting every
    record as the template's fault."""
    from importlib.metadata import requires

    assert any(req.replace(" ", "").startswith("jinja2>=3.1.6") for req in requires("packsft") or [])
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                           {"role": "assistant", "content": "a"}]}) + "\n")
    script = ("import sys; sys.modules['jinja2'] = None; from packsft.cli import main; "
              f"sys.argv = ['packsft', 'pack', {str(data)!r}, {str(tmp_path / 'out')!r}, '--tokenizer', "
              f"{str(chatml_dir)!r}, '--template', 'chat', '-q']; main()")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PACKSFT_CACHE": "off"})
    assert run.returncode == 1, run.stderr
    assert "pip install 'jinja2>=3.1.6'" in run.stderr and "rejected" not in run.stderr
    assert not (tmp_path / "out" / "rejects.jsonl").exists()
