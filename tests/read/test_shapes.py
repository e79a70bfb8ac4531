"""Record shapes of today's SFT data, read as `Conversation`s (reader + shapes + records, no renderer).

OpenAI tool calling (tools, tool_calls, tool results), reasoning fields, chat_template_kwargs, text parts,
per-message train flags, unknown message fields, ShareGPT function_call/observation, TRL prompt-completion,
Alpaca, `*.json` arrays; and the bad input each of them can hold: a counted reject with its reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from packsft.cli import main
from packsft.errors import InputError
from packsft.read import json_input
from packsft.read.reader import open_input, read_conversations
from packsft.read.records import ROLE_ALIASES, Conversation, RecordRejected, RejectLedger
from packsft.read.shapes import to_conversation

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_CHAT = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "21 degrees in Paris."},
]
GOOD = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def read(path: Path, **options) -> tuple[list[Conversation], RejectLedger]:
    """Every conversation of one file, and the ledger of its rejects."""
    rejects = RejectLedger()
    source = open_input(path, **options)
    conversations = [c for batch, _ in read_conversations(source, "conversation", rejects, batch_size=3) for c in batch]
    return conversations, rejects


def read_one(tmp_path: Path, record: dict) -> Conversation:
    conversations, rejects = read(write_jsonl(tmp_path / "one.jsonl", [record]))
    assert rejects.entries == [] and len(conversations) == 1
    return conversations[0]


def rejected(rejects: RejectLedger) -> list[tuple[int, str]]:
    return [(entry["row"], entry["reason"]) for entry in rejects.entries]


# --- OpenAI tool calling: tool_calls, tool results, tools, chat_template_kwargs ---------------------


def test_a_tool_calling_record_reads_as_the_template_reads_it(tmp_path):
    record = {"messages": TOOL_CHAT, "tools": [WEATHER], "chat_template_kwargs": {"enable_thinking": False}}
    conversation = read_one(tmp_path, record)
    assert conversation.messages == (
        ("system", "You are helpful."), ("user", "Weather in Paris?"), ("assistant", ""),
        ("tool", '{"temp": 21}'), ("assistant", "21 degrees in Paris."))
    # content null next to tool_calls is empty text; every other field is passed on as given.
    assert conversation.chat_messages() == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
        {"role": "assistant", "content": "21 degrees in Paris."},
    ]
    assert conversation.tool_calls(2) == [CALL] and conversation.tool_calls(4) == []
    assert conversation.tools == [WEATHER]
    assert conversation.template_kwargs() == {"enable_thinking": False}
    assert conversation.template_kwargs({"enable_thinking": True, "xml_tools": None}) == {
        "enable_thinking": False, "xml_tools": None}  # the row's own kwargs win over --template-kwargs
    assert [conversation.trains(i) for i in range(5)] == [True] * 5


def test_tool_call_arguments_stay_as_given_text_or_object(tmp_path):
    as_object = {**CALL, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    for call in (CALL, as_object):
        messages = [TOOL_CHAT[1], {"role": "assistant", "tool_calls": [call]}]
        assert read_one(tmp_path, {"messages": messages}).chat_messages()[1] == {
            "role": "assistant", "content": "", "tool_calls": [call]}


@pytest.mark.parametrize("role", ["tool", "ipython", "function", "observation", "Tool"])
def test_tool_result_roles(tmp_path, role):
    messages = [GOOD[0], {"role": role, "content": "42"}, GOOD[1]]
    assert read_one(tmp_path, {"messages": messages}).messages[1] == ("tool", "42")


def test_tools_and_kwargs_as_json_text(tmp_path):
    record = {"messages": TOOL_CHAT, "tools": json.dumps([WEATHER, ADD]),
              "chat_template_kwargs": json.dumps({"enable_thinking": True, "custom_instructions": None})}
    conversation = read_one(tmp_path, record)
    assert conversation.tools == [WEATHER, ADD]
    # In JSON a null is the record's own value (only a parquet struct's nulls mean "absent").
    assert conversation.template_kwargs() == {"enable_thinking": True, "custom_instructions": None}


@pytest.mark.parametrize("empty", ["", "  ", [], "[]", None])
def test_no_tools_is_no_extras(tmp_path, empty):
    conversation = read_one(tmp_path, {"messages": GOOD, "tools": empty, "chat_template_kwargs": "" if empty else None})
    assert conversation.extras is None and conversation.tools is None and conversation.template_kwargs() == {}


def test_parquet_struct_columns_read_as_the_same_records_without_their_nulls(tmp_path):
    """A struct column holds the union of every row's fields (null where a row has none): those nulls are
    dropped, so a row reads exactly as the same record from JSON Lines."""
    records = [
        {"messages": TOOL_CHAT, "tools": [WEATHER], "chat_template_kwargs": {"enable_thinking": False}},
        {"messages": [TOOL_CHAT[1], {"role": "assistant", "content": "Sunny.", "reasoning_content": "Look it up."}],
         "tools": [ADD], "chat_template_kwargs": {"enable_thinking": True, "custom_instructions": "Be brief."}},
        {"messages": GOOD, "tools": None, "chat_template_kwargs": None},
    ]
    path = tmp_path / "tools.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    table_tools = pq.read_table(path).column("tools").to_pylist()
    assert table_tools[0][0]["function"]["parameters"]["properties"]["a"] is None  # the union the file holds
    from_parquet, rejects = read(path)
    from_json, _ = read(write_jsonl(tmp_path / "tools.jsonl", records))
    assert rejects.entries == []
    for parquet_row, json_row in zip(from_parquet, from_json, strict=True):
        assert parquet_row.messages == json_row.messages
        assert parquet_row.chat_messages() == json_row.chat_messages()
        assert parquet_row.tools == json_row.tools and parquet_row.template_kwargs() == json_row.template_kwargs()
    assert from_parquet[0].tools == [WEATHER] and from_parquet[1].tools == [ADD]
    assert from_parquet[1].template_kwargs() == {"enable_thinking": True, "custom_instructions": "Be brief."}
    assert from_parquet[2].extras is None


def test_parquet_reads_only_the_columns_its_shape_needs(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "messages": GOOD, "chat_template_kwargs": {"x": 1},
                                          "tools": "[]", "score": 3.5}]), path)
    source = open_input(path)
    assert (source.input_format, source.columns) == ("smoltalk", ("messages", "tools", "chat_template_kwargs"))


# --- message fields: reasoning, text parts, train flags, unknown fields ----------------------------


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_reasoning_fields_are_given_to_the_template_as_reasoning_content(tmp_path, key):
    conversation = read_one(tmp_path, {"messages": [GOOD[0], {"role": "assistant", "content": "4", key: "2+2=4"}]})
    assert conversation.chat_messages()[1] == {"role": "assistant", "content": "4", key: "2+2=4",
                                               "reasoning_content": "2+2=4"}
    assert conversation.reasoning(1) == "2+2=4" and conversation.reasoning(0) is None


def test_reasoning_content_wins_over_other_names(tmp_path):
    message = {"role": "assistant", "content": "4", "thinking": "t", "reasoning_content": "r"}
    conversation = read_one(tmp_path, {"messages": [GOOD[0], message]})
    assert conversation.chat_messages()[1] == message and conversation.reasoning(1) == "r"


def test_text_parts_are_joined_with_newlines(tmp_path):
    parts = [{"type": "text", "text": "Look:"}, {"type": "text", "text": "two lines"}, {"text": "no type"}]
    conversation = read_one(tmp_path, {"messages": [{"role": "user", "content": parts}, GOOD[1]]})
    assert conversation.messages[0] == ("user", "Look:\ntwo lines\nno type")
    assert conversation.extras is None


def test_train_flags_from_weight_and_training(tmp_path):
    messages = [GOOD[0], {"role": "assistant", "content": "Draft.", "weight": 0}, {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "Better.", "weight": 1}, {"role": "user", "content": "More"},
                {"role": "assistant", "content": "Aside.", "training": False},
                {"role": "user", "content": "Last"}, {"role": "assistant", "content": "Done.", "training": True}]
    conversation = read_one(tmp_path, {"messages": messages})
    assert conversation.extras is not None
    assert conversation.extras.train == (None, False, None, True, None, False, None, True)
    assert [conversation.trains(i) for i in range(8)] == [True, False, True, True, True, False, True, True]
    # Train flags steer the mask; they are not template fields.
    assert all(set(message) == {"role", "content"} for message in conversation.chat_messages())


def test_unknown_message_fields_pass_through_unchanged(tmp_path):
    messages = [{"role": "user", "content": "Hi", "name": "ana", "lang": "en"},
                {"role": "assistant", "content": "Hello!", "metadata": {"score": [1, 2], "tag": None}}]
    conversation = read_one(tmp_path, {"messages": messages})
    assert conversation.chat_messages() == messages


# --- ShareGPT, prompt-completion, Alpaca -----------------------------------------------------------


def test_sharegpt_function_call_and_observation_turns_with_system_and_tools(tmp_path):
    record = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"from": "observation", "value": '{"temp": 21}'},
        {"from": "gpt", "value": "21 degrees."}],
        "system": "You are helpful.", "tools": json.dumps([WEATHER["function"]])}
    conversation = read_one(tmp_path, record)
    assert conversation.chat_messages() == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
    ]
    assert conversation.tools == [WEATHER["function"]]


def test_sharegpt_system_key_does_not_double_a_system_turn(tmp_path):
    turns = [{"from": "system", "value": "Own."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    conversation = read_one(tmp_path, {"conversations": turns, "system": "Record level."})
    assert conversation.messages == (("system", "Own."), ("user", "Hi"), ("assistant", "Yo"))


def test_prompt_completion_conversational_trains_only_the_completion(tmp_path):
    record = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
              "completion": [{"role": "assistant", "content": "4"}]}
    path = write_jsonl(tmp_path / "pc.jsonl", [record])
    assert open_input(path).input_format == "prompt_completion"
    (conversation,), _ = read(path)
    assert conversation.messages == (("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"))
    assert conversation.extras is not None and conversation.extras.train == (False, False, None)


def test_prompt_completion_text_is_two_text_messages(tmp_path):
    conversation = read_one(tmp_path, {"prompt": "The sky is", "completion": " blue."})
    assert conversation.messages == (("text", "The sky is"), ("text", " blue."))
    assert conversation.extras is not None and conversation.extras.train == (False, None)
    assert [conversation.trains(i) for i in range(2)] == [False, True]


@pytest.mark.parametrize(("record", "messages"), [
    ({"instruction": "Add 2 and 2.", "input": "", "output": "4"},
     (("user", "Add 2 and 2."), ("assistant", "4"))),
    ({"instruction": "Translate to French.", "input": "cat", "output": "chat"},
     (("user", "Translate to French.\ncat"), ("assistant", "chat"))),
    ({"instruction": "And 3+3?", "output": "6", "system": "Be brief.", "history": [["2+2?", "4"]]},
     (("system", "Be brief."), ("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3?"), ("assistant", "6"))),
])
def test_alpaca_rows(tmp_path, record, messages):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [record])
    source = open_input(path)
    assert (source.input_format, source.detected) == ("alpaca", "'instruction' and 'output' keys")
    (conversation,), _ = read(path)
    assert conversation.messages == messages and conversation.extras is None


# --- *.json files: one array of records (streamed), or JSON Lines ----------------------------------

SHAREGPT = [{"conversations": [{"from": "human", "value": f"Question {i} " + "x" * (37 * i)},
                               {"from": "gpt", "value": f"Answer {i} caf\u00e9"}]} for i in range(12)]


def sharegpt_read_as_jsonl(tmp_path: Path) -> list[tuple[tuple[str, str], ...]]:
    conversations, _ = read(write_jsonl(tmp_path / "ref.jsonl", SHAREGPT))
    return [c.messages for c in conversations]


@pytest.mark.parametrize("chunk", [1 << 20, 5, 64])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_array_is_streamed_element_by_element(tmp_path, monkeypatch, chunk, indent):
    """Elements that span the read chunk (monkeypatched small: every element spans several) read whole."""
    monkeypatch.setattr(json_input, "JSON_CHUNK_CHARS", chunk)
    path = tmp_path / "data.json"
    path.write_text("\ufeff" + json.dumps(SHAREGPT, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    conversations, rejects = read(path)
    assert [c.messages for c in conversations] == sharegpt_read_as_jsonl(tmp_path)
    assert [c.row for c in conversations] == list(range(12)) and rejects.entries == []


def test_a_json_file_may_hold_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "data.json", SHAREGPT)
    conversations, _ = read(path)
    assert [c.messages for c in conversations] == sharegpt_read_as_jsonl(tmp_path)


@pytest.mark.parametrize(("text", "error"), [
    (json.dumps(SHAREGPT)[:-40], "the file ends inside element 11 of the JSON array (the file may be cut off)"),
    (json.dumps(SHAREGPT)[:-1],
     "the file ends after element 11 of the JSON array, where ',' or ']' belongs (the file may be cut off)"),
    (json.dumps(SHAREGPT)[:-1] + ",]",
     "a ',' after element 11 of the JSON array, before its closing ']' (JSON allows no trailing comma)"),
    (json.dumps(SHAREGPT) + json.dumps(SHAREGPT),
     "'[' follows the JSON array's closing ']'; a *.json file holds one array of records, or one record per line"),
    (json.dumps(SHAREGPT).replace('"from": "gpt"', '"from" "gpt"', 1),
     "element 0 of the JSON array is not valid JSON (Expecting ':' delimiter at character 70 of the element)"),
])
def test_a_broken_json_array_is_an_error_naming_the_file(tmp_path, monkeypatch, text, error):
    monkeypatch.setattr(json_input, "JSON_CHUNK_CHARS", 64)
    path = tmp_path / "cut.json"
    path.write_text(text)
    with pytest.raises(InputError) as raised:
        read(path)
    assert str(raised.value) == f"{path}: {error}"


# --- bad input: each a counted reject with its reason, never a crash ------------------------------

ASK = {"role": "user", "content": "Weather?"}


def calling(*calls) -> list[dict]:
    return [ASK, {"role": "assistant", "content": None, "tool_calls": list(calls)}]


BAD_RECORDS = [
    ({"messages": GOOD, "tools": {"type": "function"}}, "tools is not a list (got dict)"),
    ({"messages": GOOD, "tools": '"get_weather"'}, "tools is not a list (got str)"),
    ({"messages": GOOD, "tools": [WEATHER, "add"]}, "tools entry 1 is not a mapping (got str)"),
    ({"messages": GOOD, "tools": '[{"type": "function",'},
     "tools is not valid JSON (got Expecting property name enclosed in double quotes at character 21)"),
    ({"messages": GOOD, "chat_template_kwargs": "{enable_thinking: false}"},
     "chat_template_kwargs is not valid JSON (got Expecting property name enclosed in double quotes at character 1)"),
    ({"messages": GOOD, "chat_template_kwargs": [1]}, "chat_template_kwargs is not a mapping (got list)"),
    ({"messages": calling({"type": "function", "function": {"arguments": "{}"}})},
     "message 1 tool call 0 has no function name"),
    ({"messages": calling(CALL, {"function": {"name": "", "arguments": {}}})}, "message 1 tool call 1 has no function name"),
    ({"messages": calling({"function": {"name": "f", "arguments": '{"city": "Par'}})},
     "message 1 tool call 0 arguments are not valid JSON (Unterminated string starting at character 9)"),
    ({"messages": calling({"function": "get_weather"})}, "message 1 tool call 0 function is not a mapping"),
    ({"messages": calling(7)}, "message 1 tool call 0 is not a mapping (got int)"),
    ({"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": 7}]},
     "message 1 tool_calls is not a list (got int)"),
    ({"messages": [ASK, {"role": "assistant", "content": "x", "tool_calls": "[{"}]},
     "message 1 tool_calls is not valid JSON (got Expecting property name enclosed in double quotes at character 2)"),
    ({"messages": [ASK, {"role": "assistant", "content": None}]}, "message 1 has no content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}, GOOD[1]]},
     "message 0 has a content part of type 'image_url'; packsft packs text only (drop or describe non-text parts "
     "upstream)"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}, GOOD[1]]},
     "message 0 content part 0 has no text"),
    ({"messages": [GOOD[0], {"role": "assistant", "content": "x", "weight": 2}]},
     "message 1 weight must be 0 or 1 (got 2)"),
    ({"messages": [GOOD[0], {"role": "assistant", "content": "x", "weight": True}]},
     "message 1 weight must be 0 or 1 (got True)"),
    ({"messages": [GOOD[0], {"role": "assistant", "content": "x", "training": "no"}]},
     "message 1 training must be true or false (got 'no')"),
    ({"messages": [GOOD[0], {"role": "assistant", "content": "x", "reasoning": ["a"]}]},
     "message 1 reasoning is not a string (got list)"),
]


def test_bad_records_are_counted_rejects_with_their_reason(tmp_path):
    records = [record for bad, _ in BAD_RECORDS for record in ({"messages": GOOD}, bad)]
    conversations, rejects = read(write_jsonl(tmp_path / "bad.jsonl", records))
    assert rejected(rejects) == [(2 * i + 1, reason) for i, (_, reason) in enumerate(BAD_RECORDS)]
    assert len(conversations) == len(BAD_RECORDS) and rejects.total == len(BAD_RECORDS)
    # Reasons group without their indices and values.
    assert rejects.counts["message tool call has no function name"] == 2
    assert rejects.counts["message has a content part of type"] == 1
    assert rejects.counts["tools is not a list"] == 2


def test_bad_sharegpt_tool_turns_are_rejects(tmp_path):
    def turns(call: str) -> dict:
        return {"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": call}]}

    records = [turns('{"name": "f", "arguments": {}}'), turns("{name: f}"), turns('{"arguments": {}}'),
               turns("[1]"), {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
                              "system": 3}]
    conversations, rejects = read(write_jsonl(tmp_path / "bad.jsonl", records))
    assert len(conversations) == 1
    assert rejected(rejects) == [
        (1, "message 1 function_call is not valid JSON (got Expecting property name enclosed in double quotes at "
            "character 1)"),
        (2, "message 1 tool call 0 has no function name"),
        (3, "message 1 function_call is not a JSON object"),
        (4, "system is not a string (got int)"),
    ]


def test_bad_prompt_completion_rows_are_rejects(tmp_path):
    records = [{"prompt": "", "completion": "Once upon a time."}, {"prompt": "The sky is", "completion": [GOOD[1]]},
               {"prompt": "The sky is", "completion": ""}, {"prompt": None, "completion": [GOOD[1]]},
               {"prompt": [GOOD[0]], "completion": []}, {"prompt": [GOOD[0]], "completion": [{"role": "gpt"}]}]
    conversations, rejects = read(write_jsonl(tmp_path / "bad.jsonl", records))
    assert [c.messages for c in conversations] == [(("text", ""), ("text", "Once upon a time."))]
    assert rejected(rejects) == [
        (1, "prompt and completion must both be text or both be message lists"), (2, "empty completion"),
        (3, "prompt is null"), (4, "empty message list"), (5, "completion message 0 has no content"),
    ]


def test_bad_alpaca_rows_are_rejects(tmp_path):
    records = [{"instruction": "Hi", "output": "Yo"}, {"instruction": "", "input": "", "output": "x"},
               {"instruction": "Hi", "output": None}, {"instruction": 3, "output": "x"},
               {"instruction": "Hi", "output": "x", "history": [["only one"]]},
               {"instruction": "Hi", "output": "x", "history": "[[1, "},
               {"instruction": "Hi", "output": "x", "history": [["a", 2]]},
               {"instruction": "Hi", "output": "x", "history": 5}]
    conversations, rejects = read(write_jsonl(tmp_path / "bad.jsonl", records))
    assert len(conversations) == 1
    assert rejected(rejects) == [
        (1, "empty instruction"), (2, "output is null"), (3, "instruction is not a string (got int)"),
        (4, "history is not a list of [instruction, response] pairs of text"),
        (5, "history is not valid JSON (got Expecting value at character 5)"),
        (6, "history is not a list of [instruction, response] pairs of text"), (7, "history is not a list (got int)"),
    ]


FIELD_NAMES = ["role", "content", "from", "value", "type", "text", "tool_calls", "function", "name", "arguments", "id",
               "weight", "training", "reasoning", "thinking", "reasoning_content", "tool_call_id"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(["", "x", "[", "{}", "[]", '{"a": 1}', "user", "tool",
                                                                       "function_call", "text", "image_url", "name"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=4),
    max_leaves=12)
SHAPE_FIELDS = {"openai": "messages", "sharegpt": "conversations", "prompt_completion": "prompt",
                "alpaca": "instruction"}


@settings(max_examples=300, deadline=None)
@given(shape=st.sampled_from(sorted(SHAPE_FIELDS)), structs=st.booleans(), record=st.fixed_dictionaries({}, optional={
    name: json_values for name in ["messages", "conversations", "prompt", "completion", "instruction", "input",
                                   "output", "system", "history", "tools", "chat_template_kwargs"]}))
def test_any_record_reads_or_is_rejected_with_a_reason(shape, structs, record):
    """Never a crash: whatever the values, a record is a conversation or a RecordRejected with a reason."""
    try:
        messages, extras = to_conversation(shape, record, ROLE_ALIASES, structs=structs)
    except RecordRejected as bad:
        assert bad.reason
        return
    assert messages and all(isinstance(content, str) for _, content in messages)
    assert extras is None or len(extras.fields) == len(extras.train) == len(messages)


# --- the README's examples ----------------------------------------------------------------------------


def test_the_readme_examples_read_as_documented(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```json\n")[1:] if '"function_call"' in b).split("\n```")[0]
    records, at = [], 0
    while at < len(block):
        record, at = json.JSONDecoder().raw_decode(block, at)
        records.append(record)
        at = len(block) - len(block[at:].lstrip())
    shapes = []
    for index, record in enumerate(records):
        path = write_jsonl(tmp_path / f"{index}.jsonl", [record])
        shapes.append(open_input(path).input_format)
        read_one(tmp_path, record)  # no reject
    assert shapes == ["openai", "sharegpt", "prompt_completion", "prompt_completion", "alpaca"]
    tool_chat = read_one(tmp_path, records[0])
    assert tool_chat.messages[1:3] == (("user", "Weather in Paris?"), ("assistant", ""))
    assert tool_chat.reasoning(2) == "I should look it up." and tool_chat.template_kwargs() == {"enable_thinking": False}


# --- end to end, --template roles on the shapes every renderer reads -------------------------------


def test_classic_shapes_pack_from_the_cli(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "d"
    write_jsonl(data / "alpaca.jsonl", [{"instruction": "Add 2 and 2.", "input": "", "output": "4"},
                                        {"instruction": "Translate.", "input": "cat", "output": "chat",
                                         "system": "Be brief.", "history": [["Hi", "Hello!"]]}])
    write_jsonl(data / "completion.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    (data / "share.json").write_text(json.dumps(SHAREGPT[:3], indent=2))
    (data / "dataset_info.json").write_text(json.dumps({"share": {"file_name": "share.json"}}))
    result = CliRunner().invoke(main, ["pack", str(data), str(tmp_path / "out"), "--tokenizer",
                                       str(demo_tokenizer_dir), "--seq-length", "64", "--template", "roles"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if line.startswith("packsft: input format")]
    assert said == [
        "packsft: input format alpaca (auto, from the 'instruction' and 'output' keys) for 1 file",
        "packsft: input format prompt_completion (auto, from the 'prompt' and 'completion' keys) for 1 file",
        "packsft: input format sharegpt (auto, from the 'conversations' key) for 1 file",
    ]
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert [shard["inputs"][0]["path"] for shard in dataset["shards"]] == ["alpaca.jsonl", "completion.jsonl",
                                                                            "share.json"]
    assert dataset["stats"]["conversations_packed"] == 6 and dataset["stats"]["records_rejected"] == 0


def test_tools_on_a_text_prompt_completion_row_are_a_reject_not_dropped():
    with pytest.raises(RecordRejected, match="tools on a text prompt-completion row"):
        to_conversation("prompt_completion", {"prompt": "2+2=", "completion": "4", "tools": [WEATHER]}, ROLE_ALIASES)
    messages, _ = to_conversation("prompt_completion", {"prompt": "2+2=", "completion": "4", "tools": []}, ROLE_ALIASES)
    assert messages == (("text", "2+2="), ("text", "4"))

