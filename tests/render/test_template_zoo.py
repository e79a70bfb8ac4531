"""The template zoo (tests/render/zoo.py): every real chat template of ../shared/templates, on a tokenizer built
like its model's, packs every record shape as `apply_chat_template` renders it and trains what the model generates.

The quick loop runs three shapes per family and one test per failure class the zoo found; the whole grid and the
pipeline run (pack + verify, no record lost) are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packsft import PackConfig, load_tokenizer
from packsft.render.chat import ChatRenderer, render_chat
from packsft.run import run_pack
from tests.helpers import assert_output_verifies
from tests.render.zoo import (
    BY_NAME,
    FAMILIES,
    QUICK_SHAPES,
    RECORDS,
    TEMPLATES,
    build_tokenizer,
    check,
    conversation,
    expected,
    trained_runs,
)

pytestmark = pytest.mark.skipif(not TEMPLATES.is_dir() or not (TEMPLATES.parent / "tokenizers" / "gpt2").is_dir(),
                                reason=f"the real chat templates and GPT-2 tokenizer are not at {TEMPLATES.parent} "
                                       "(the shared assets are only in the developer checkout and CI)")


@pytest.fixture(scope="session")
def zoo_tokenizers(tmp_path_factory):
    """Family name -> its PackTokenizer (chat template), built once per session."""
    built: dict = {}

    def get(name: str):
        if name not in built:
            folder = build_tokenizer(BY_NAME[name], tmp_path_factory.mktemp(name))
            built[name] = load_tokenizer(str(folder), "chat", encoder="auto")
        return built[name]

    return get


def _assert_exact(family_name: str, shapes, zoo_tokenizers) -> None:
    tokenizer = zoo_tokenizers(family_name)
    failures = [check(BY_NAME[family_name], tokenizer, tokenizer.hf, shape, RECORDS[shape]) for shape in shapes]
    bad = [f"{o.shape}: {o.detail}" for o in failures if not o.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_quick_shapes_pack_exactly(family, zoo_tokenizers):
    _assert_exact(family, QUICK_SHAPES, zoo_tokenizers)


@pytest.mark.slow
@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_every_shape_packs_exactly(family, zoo_tokenizers):
    _assert_exact(family, list(RECORDS), zoo_tokenizers)


def _trained(name: str, shape: str, zoo_tokenizers) -> list[str]:
    tokenizer = zoo_tokenizers(name)
    batch = render_chat([conversation(RECORDS[shape])], tokenizer)
    return trained_runs(tokenizer.hf, batch.ids, batch.flags)


# -- one test per failure class the zoo found -------------------------------------------------------------------
def test_gpt_oss_trains_earlier_answers_through_the_end_the_template_renders(zoo_tokenizers):
    assert _trained("gpt-oss", "multi_no_system", zoo_tokenizers) == [
        "<|channel|>final<|message|>Two<|end|>", "<|channel|>final<|message|>Four<|return|>"]
    # A two-step tool trace with thinking: each call through <|call|>, the tool results never.
    runs = _trained("gpt-oss", "tool_trace_thinking", zoo_tokenizers)
    assert [run.rsplit("<|", 1)[-1] for run in runs] == ["call|>", "call|>", "return|>"]
    assert not any("functions.get_weather to=assistant" in run for run in runs)


def test_mistral_nemo_trains_no_user_text_when_the_template_moves_the_system_message(zoo_tokenizers):
    runs = _trained("mistral-nemo", "tools_two_users", zoo_tokenizers)
    assert runs[0] == "Hello.</s>" and runs[2] == "12 C in Bern.</s>"
    assert not any("[INST]" in run for run in runs)


def test_phi35_trains_neither_the_generation_prompt_nor_the_appended_eos(zoo_tokenizers):
    assert _trained("phi3.5", "multi_no_system", zoo_tokenizers) == ["Two<|end|>", "Four<|end|>"]


def test_command_r_trains_neither_the_next_turn_token_nor_the_trailing_prompt(zoo_tokenizers):
    assert _trained("command-r7b", "multi_no_system", zoo_tokenizers) == [
        "<|START_RESPONSE|>Two<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
        "<|START_RESPONSE|>Four<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"]


@pytest.mark.parametrize("shape", ["tools_dict", "tools_system_escaped"])
def test_llama_packs_tools_with_a_system_message_and_escaped_results(shape, zoo_tokenizers):
    tokenizer = zoo_tokenizers("llama3.1")
    outcome = check(BY_NAME["llama3.1"], tokenizer, tokenizer.hf, shape, RECORDS[shape])
    assert outcome.packed and outcome.ok, outcome.detail


def test_llama_locates_messages_where_the_template_refuses_a_prefix(zoo_tokenizers):
    """A special-token string in a content sends the record past its skeleton; the system message alone (a prefix
    Llama 3 refuses with tools) is then located from a stand-in continuation."""
    tokenizer = zoo_tokenizers("llama3.1")
    record = json.loads(json.dumps(RECORDS["tools_dict"]))
    record["messages"][1]["content"] = "Weather in <|eot_id|> Paris?"
    batch = render_chat([conversation(record)], tokenizer)
    assert trained_runs(tokenizer.hf, batch.ids, batch.flags) == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 C in Paris.<|eot_id|>"]
    eot = tokenizer.hf.convert_tokens_to_ids("<|eot_id|>")
    assert batch.ids.tolist().count(eot) == 5  # the one in the content is plain text
    spans = [tokenizer.hf.decode(batch.ids[s:e].tolist()) for s, e in zip(batch.msg_starts, batch.msg_ends)]
    assert [span.split("<|end_header_id|>")[0] for span in spans] == [
        "<|start_header_id|>system", "<|start_header_id|>user", "<|start_header_id|>assistant",
        "<|start_header_id|>ipython", "<|start_header_id|>assistant"]


def test_smollm3_think_tags_that_open_a_turn_are_its_tokens(zoo_tokenizers):
    tokenizer = zoo_tokenizers("smollm3")
    conv = conversation(RECORDS["think_in_content"])
    batch = render_chat([conv], tokenizer)
    want = expected(BY_NAME["smollm3"], tokenizer.hf, conv)
    assert batch.ids.tolist() == want.ids.tolist()
    think = tokenizer.hf.convert_tokens_to_ids("<think>")
    # The system prompt's own <think> and the two turns' tags; a <think> elsewhere in a record stays plain text.
    assert batch.ids.tolist().count(think) == 3
    plain = render_chat([conversation({"messages": [{"role": "user", "content": "Say <think> now"},
                                                    {"role": "assistant", "content": "ok"}]})], tokenizer)
    assert plain.ids.tolist().count(think) == 1


def test_glm_trains_the_next_role_token_and_appends_eos_after_the_last_turn(zoo_tokenizers):
    tokenizer = zoo_tokenizers("glm4.6")
    renderer = ChatRenderer(tokenizer)
    batch = render_chat([conversation(RECORDS["multi_no_system"])], tokenizer, renderer=renderer)
    assert _trained("glm4.6", "multi_no_system", zoo_tokenizers) == [
        "\n<think></think>\nTwo<|user|>", "\n<think></think>\nFour<|endoftext|>"]
    assert batch.ids[-1] == tokenizer.eos_id
    assert renderer.counts.stop_tokens_appended == 1
    runs = _trained("glm4.6", "tools_dict", zoo_tokenizers)
    assert runs[0].endswith("</tool_call><|observation|>")


@pytest.mark.slow
@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_the_pipeline_packs_every_record_the_template_renders(family, zoo_tokenizers, tmp_path: Path):
    """`packsft pack` of every shape loses no record the template renders, and its output verifies."""
    tokenizer = zoo_tokenizers(family)
    data = tmp_path / "data" / "zoo.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(record) + "\n" for record in RECORDS.values()))
    rendered = sum(expected(BY_NAME[family], tokenizer.hf, conversation(r)).text is not None for r in RECORDS.values())
    out = tmp_path / "out"
    run_pack(data.parent, out, PackConfig(tokenizer=tokenizer.name, template="chat", seq_length=512,
                                                max_reject_fraction=1.0), quiet=True)
    counters = json.loads((out / "dataset.json").read_text())["counters"]
    assert counters["conversations_packed"] == rendered
    assert_output_verifies(out)


def test_verify_catches_a_trained_next_turn_token_with_command_r(zoo_tokenizers, tmp_path_factory):
    """Command-R7B names its roles with special tokens of their own; verify reads its rows by them and refuses the
    failure the issue found there: the <|START_OF_TURN_TOKEN|> that opens the next message trained."""
    import numpy as np

    from packsft.verify import verify_output
    from tests.helpers import load_array, rewrite_array

    tokenizer = zoo_tokenizers("command-r7b")
    base = tmp_path_factory.mktemp("command-r")
    (base / "data").mkdir()
    (base / "data" / "zoo.jsonl").write_text(json.dumps(RECORDS["multi_no_system"]) + "\n")
    out = base / "out"
    run_pack(base / "data", out, PackConfig(tokenizer=tokenizer.name, template="chat", seq_length=2048), quiet=True)
    assert verify_output(out) == []
    tokens, mask = load_array(out, 0, "tokens.npy")[0].tolist(), load_array(out, 0, "loss_mask.npy").copy()
    end = tokenizer.backend.token_to_id("<|END_OF_TURN_TOKEN|>")
    after_first_answer = [i for i, token in enumerate(tokens) if token == end][2] + 1  # system, user, first answer
    assert tokens[after_first_answer] == tokenizer.backend.token_to_id("<|START_OF_TURN_TOKEN|>")
    mask[0, after_first_answer - 1] = 1  # the flag of token i is loss_mask[i - 1]
    rewrite_array(out, 0, "loss_mask.npy", mask)
    problems = [str(p) for p in verify_output(out)]
    assert any("row 0" in p and "next" in p for p in problems), problems
    assert np.array_equal(load_array(out, 0, "loss_mask.npy"), mask)


def test_glm_pieces_keep_each_turns_stop_and_the_head_when_a_conversation_is_split(zoo_tokenizers):
    """GLM ends a turn with the next message's role token; where a piece closes before that message, the closed
    piece trains the token as its turn's last label (as role tokens do), and the next piece, which re-opens with
    the head GLM opens every conversation with ([gMASK]<sop>), does not train it."""
    from packsft.pack.split import split_long

    tokenizer = zoo_tokenizers("glm4.6")
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."},
                           {"role": "user", "content": "Now a long question " + "with many words " * 8 + "ok?"},
                           {"role": "assistant", "content": "Fine."}]}
    batch = render_chat([conversation(record)], tokenizer)
    table, counts = split_long(batch, 44, "split")
    pieces = [(table.ids[a:b].tolist(), table.flags[a:b].tolist()) for a, b in zip(table.offsets[:-1], table.offsets[1:])]
    assert len(pieces) == 2 and counts.exchanges_split == 0
    head = tokenizer.hf.encode("[gMASK]<sop>", add_special_tokens=False)
    stops = set(tokenizer.stop_ids)
    for ids, flags in pieces:
        assert ids[:len(head)] == head
        trained = [i for i, flag in enumerate(flags) if flag]
        assert ids[trained[-1]] in stops and trained[-1] == len(ids) - 1  # each piece ends with its turn's stop
    user = tokenizer.hf.convert_tokens_to_ids("<|user|>")
    assert pieces[0][0][-1] == user and pieces[1][1][pieces[1][0].index(user)] == 0
    assert table.flags.sum() == batch.flags.sum()  # every label kept, once
