"""`--template roles` on agentic and reasoning data (README "Rendering"): exact ids and flags on the demo tokenizer.

Tool definitions, tool results, tool calls and reasoning are plain text in the seed's turns (no new token);
definitions and results are never trained, calls and reasoning are; weight-0 messages are context only.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft import load_tokenizer
from packsft.read.records import ASSISTANT, ROLE_ALIASES, SYSTEM, TOOL, USER, ChatExtras, Conversation
from packsft.read.shapes import to_conversation
from packsft.render.roles import render_roles, role_texts

README = Path(__file__).resolve().parents[2] / "README.md"

# The demo tokenizer's control ids (built by packsft.demo; --template roles adds BOS, pad and the role tokens).
BOS, EOS, PAD, USR, ASST, SYS = 727, 0, 728, 729, 730, 731
HI = [40, 73]  # "Hi"
OK = [79, 75]  # "ok"
TWO = [18]  # "2"
# '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
CALL = [28, 84, 319, 76, 63, 67, 339, 30, 199, 91, 2, 78, 65, 312, 2, 26, 221, 2, 70, 2, 12, 221, 2, 459, 71, 85, 312,
        78, 313, 2, 26, 221, 91, 2, 88, 2, 26, 221, 17, 93, 93, 199, 28, 15, 84, 319, 76, 63, 67, 339, 30]
NEWLINE = [199]  # "\n" before a call that follows content or another call
# '<tool_response>\n2\n</tool_response>'
RESULT = [28, 84, 319, 76, 63, 262, 83, 80, 265, 291, 30, 199, 18, 199, 28, 15, 84, 319, 76, 63, 262, 83, 80, 265,
          291, 30]
# '<think>\nhm\n</think>\n\nok'
THINK_OK = [28, 463, 75, 30, 199, 72, 77, 199, 28, 15, 463, 75, 30, 199, 199, 79, 75]
BE_BRIEF = [34, 69, 401, 82, 73, 69, 70, 14]  # "Be brief."
# '\n\n# Tools\n\n<tools>\n{"name": "f"}\n</tools>' after "Be brief.", and the block alone
TOOLS_AFTER = [199, 199, 3, 221, 52, 319, 611, 199, 199, 28, 84, 319, 611, 30, 199, 91, 2, 78, 65, 312, 2, 26, 221, 2,
               70, 2, 93, 199, 28, 15, 84, 319, 611, 30]
TOOLS_ALONE = TOOLS_AFTER[2:]

F_CALL = {"type": "function", "id": "call_1", "function": {"name": "f", "arguments": '{"x": 1}'}}


@pytest.fixture(scope="module")
def demo(demo_tokenizer_dir):
    tokenizer = load_tokenizer(str(demo_tokenizer_dir))
    assert tokenizer.special_ids == {"bos": BOS, "eos": EOS, "pad": PAD, "user": USR, "assistant": ASST, "system": SYS}
    return tokenizer


def chat(*messages: tuple[str, str, dict | None], tools: list | None = None, train: tuple = ()) -> Conversation:
    """A conversation with per-message fields (None: none), as the reader builds it."""
    fields = tuple(fields for _, _, fields in messages)
    return Conversation(tuple((role, content) for role, content, _ in messages),
                        extras=ChatExtras(fields, train or (None,) * len(messages), tools))


def rendered(tokenizer, conversation: Conversation, mask: str = "assistant_only") -> tuple[list[int], list[int]]:
    batch = render_roles([conversation], tokenizer, mask=mask)
    return batch.ids.tolist(), batch.flags.tolist()


def test_a_tool_calling_conversation(demo):
    conversation = chat((USER, "Hi", None), (ASSISTANT, "", {"tool_calls": [F_CALL]}),
                        (TOOL, "2", {"tool_call_id": "call_1", "name": "f"}), (ASSISTANT, "ok", None))
    ids, flags = rendered(demo, conversation)
    assert ids == [BOS, USR, *HI, ASST, *CALL, USR, *RESULT, ASST, *OK, EOS]
    # The call is trained with its turn; the tool result's <|user|> ends that turn (trained), its text is not.
    assert flags == [0, 0, 0, 0, 1, *[1] * len(CALL), 1, *[0] * len(RESULT), 1, 1, 1, 1]
    assert render_roles([conversation], demo).msg_roles.tolist() == [1, 2, 4, 2]  # the result keeps TOOL_CODE


def test_content_before_calls_and_calls_after_calls_get_a_newline(demo):
    object_arguments = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    conversation = chat((USER, "Hi", None), (ASSISTANT, "ok", {"tool_calls": [F_CALL, object_arguments]}))
    ids, _ = rendered(demo, conversation)
    assert ids == [BOS, USR, *HI, ASST, *OK, *NEWLINE, *CALL, *NEWLINE, *CALL, EOS]


def test_reasoning_content_opens_the_assistant_turn_and_is_trained(demo):
    conversation = chat((USER, "Hi", None), (ASSISTANT, "ok", {"reasoning_content": "hm"}))
    ids, flags = rendered(demo, conversation)
    assert ids == [BOS, USR, *HI, ASST, *THINK_OK, EOS]
    assert flags == [0, 0, 0, 0, 1, *[1] * len(THINK_OK), 1]
    # `reasoning` and `thinking` are read as well (the reader copies them to reasoning_content).
    assert rendered(demo, chat((USER, "Hi", None), (ASSISTANT, "ok", {"thinking": "hm"})))[0] == ids


@pytest.mark.parametrize("system", [True, False])
def test_tool_definitions_end_the_system_turn_and_are_never_trained(demo, system):
    head = ((SYSTEM, "Be brief.", None),) if system else ()
    conversation = chat(*head, (USER, "Hi", None), (ASSISTANT, "ok", None), tools=[{"name": "f"}])
    ids, flags = rendered(demo, conversation)
    # Without a system message, one is made to hold the definitions.
    system_text = BE_BRIEF + TOOLS_AFTER if system else TOOLS_ALONE
    assert ids == [BOS, SYS, *system_text, USR, *HI, ASST, *OK, EOS]
    assert flags == [0] * (len(system_text) + 5) + [1, 1, 1, 1]
    assert render_roles([conversation], demo).msg_roles.tolist() == [0, 1, 2]


def test_a_tool_result_without_a_call_id_is_still_a_tool_result(demo):
    conversation = Conversation(((USER, "Hi"), (ASSISTANT, "ok"), (TOOL, "2")))  # no extras at all
    ids, flags = rendered(demo, conversation)
    assert ids == [BOS, USR, *HI, ASST, *OK, USR, *RESULT, EOS]
    assert flags == [0, 0, 0, 0, 1, 1, 1, 1, *[0] * len(RESULT), 0]


@pytest.mark.parametrize("mask", ["assistant_only", "all"])
def test_weight_0_turns_their_role_token_and_turn_end_are_context(demo, mask):
    conversation = chat((USER, "Hi", None), (ASSISTANT, "ok", None), (USER, "Hi", None), (ASSISTANT, "ok", None),
                        train=(None, False, None, None))
    ids, flags = rendered(demo, conversation, mask)
    assert ids == [BOS, USR, *HI, ASST, *OK, USR, *HI, ASST, *OK, EOS]
    user = 1 if mask == "all" else 0
    assert flags == [0, user, user, user, 0, 0, 0, 0, user, user, 1, 1, 1, 1]
    # A weight-0 last turn: its EOS is not trained either.
    last = chat((USER, "Hi", None), (ASSISTANT, "ok", None), train=(None, False))
    assert rendered(demo, last, mask)[1] == [0, user, user, user, 0, 0, 0, 0]


def test_weight_0_on_a_user_message_keeps_the_turn_end_before_it_and_the_turn_after_it(demo):
    conversation = chat((USER, "Hi", None), (ASSISTANT, "ok", None), (USER, "Hi", None), (ASSISTANT, "ok", None),
                        train=(False, None, False, None))
    assert rendered(demo, conversation)[1] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1]


def test_conversational_prompt_completion_trains_the_completion_turn(demo):
    # shapes.py marks every prompt message weight 0: the <|assistant|> that opens the completion still trains.
    conversation = chat((USER, "Hi", None), (ASSISTANT, "ok", None), (USER, "Hi", None), (ASSISTANT, "ok", None),
                        train=(False, False, False, None))
    assert rendered(demo, conversation)[1] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("mask", ["assistant_only", "all"])
def test_plain_text_prompt_completion_is_bos_prompt_completion_eos(demo, mask):
    conversation, extras = to_conversation("prompt_completion", {"prompt": "Say", "completion": " hi"}, ROLE_ALIASES)
    ids, flags = rendered(demo, Conversation(conversation, extras=extras), mask)
    assert ids == [BOS, 51, 428, 411, 73, EOS]  # BOS "Say" " hi" EOS, no role token
    assert flags == [0, 0, 0, 1, 1, 1]


def test_extras_without_agentic_fields_render_as_plain_chat(demo):
    plain = Conversation(((SYSTEM, "Be brief."), (USER, "Hi"), (ASSISTANT, "ok")))
    with_fields = chat((SYSTEM, "Be brief.", None), (USER, "Hi", {"name": "ann"}), (ASSISTANT, "ok", {"id": 3}),
                       train=(None, None, True))
    batch = render_roles([plain, with_fields, plain], demo)
    lengths = batch.lengths.tolist()
    assert lengths[0] == lengths[1] == lengths[2]
    assert batch.ids.tolist()[: lengths[0]] * 3 == batch.ids.tolist()
    assert batch.flags.tolist()[: lengths[0]] * 3 == batch.flags.tolist()


# --- the README example --------------------------------------------------------------------------------

def _readme_example() -> tuple[dict, str]:
    section = README.read_text().split("### Rendering (`--template roles`)")[1].split("\n### ")[0]
    record = re.search(r"```json\n(.*?)\n\s*```", section, re.S)
    text = re.search(r"```text\n(.*?)\n\s*```", section, re.S)
    assert record and text, "README 'Rendering' lost its example"
    return json.loads(textwrap.dedent(record.group(1))), textwrap.dedent(text.group(1))


def test_the_readme_example_is_what_render_roles_gives(demo):
    record, expected = _readme_example()
    messages, extras = to_conversation("openai", record, ROLE_ALIASES)
    batch = render_roles([Conversation(messages, extras=extras)], demo)
    assert demo.hf.decode(batch.ids.tolist()) == expected
    # The trained runs the README names.
    ids, flags = batch.ids.tolist(), batch.flags.tolist()
    runs, run = [], []
    for token, flag in zip(ids, flags):
        if flag:
            run.append(token)
        elif run:
            runs.append(demo.hf.decode(run))
            run = []
    runs.append(demo.hf.decode(run))
    assert runs[0].startswith("<|assistant|><think>") and runs[0].endswith("</tool_call><|user|>")
    assert runs[1:] == ["<|assistant|>21 °C.<|endoftext|>"]


# --- the vectorised rendering equals a per-message loop -----------------------------------------------

def reference(conversation: Conversation, tokenizer, mask: str) -> tuple[list[int], list[int]]:
    """The role format with agentic data, one message at a time (the texts from `role_texts`)."""
    messages, trains = role_texts(conversation)
    ids, flags = [tokenizer.bos_id], [0]
    previous = None  # (role, masked)
    for (role, text), trains_it in zip(messages, trains):
        masked = not trains_it and (mask == "all" or role == ASSISTANT)
        opens = mask == "all" or role == ASSISTANT or (role in (USER, TOOL) and previous is not None
                                                       and previous[0] == ASSISTANT)
        ids.append(tokenizer.role_ids[USER if role == TOOL else role])
        flags.append(int(opens and not masked and not (previous is not None and previous[1])))
        tokens = tokenizer.encode_texts([text])[0]
        ids += tokens
        flags += [int((mask == "all" or role == ASSISTANT) and not masked)] * len(tokens)
        previous = (role, masked)
    assert previous is not None
    ids.append(tokenizer.eos_id)
    flags.append(int((mask == "all" or previous[0] == ASSISTANT) and not previous[1]))
    return ids, flags


_MESSAGE = st.tuples(
    st.sampled_from([USER, ASSISTANT, TOOL, SYSTEM]),
    st.sampled_from(["Hi", "ok", "2", ""]),
    st.sampled_from([None, {"reasoning_content": "hm"}, {"tool_calls": [F_CALL]}, {"name": "f"}]),
    st.sampled_from([None, False, True]),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.lists(_MESSAGE, min_size=1, max_size=6), st.booleans(), st.booleans()),
                min_size=1, max_size=5),
       st.sampled_from(["assistant_only", "all"]))
def test_render_roles_equals_the_per_message_reference(demo, spec, mask):
    conversations = []
    for messages, tools, extras in spec:
        # Fields only on assistant messages, as the reader would accept them.
        parts = [(role, content, fields if role == ASSISTANT else None) for role, content, fields, _ in messages]
        if extras or tools:
            conversations.append(chat(*parts, tools=[{"name": "f"}] if tools else None,
                                      train=tuple(flag for *_, flag in messages)))
        else:
            conversations.append(Conversation(tuple((role, content) for role, content, _ in parts)))
    batch = render_roles(conversations, demo, mask=mask)
    for c, conversation in enumerate(conversations):
        lo, hi = batch.conv_offsets[c], batch.conv_offsets[c + 1]
        assert (batch.ids[lo:hi].tolist(), batch.flags[lo:hi].tolist()) == reference(conversation, demo, mask)
