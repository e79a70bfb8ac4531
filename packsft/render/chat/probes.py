"""Probe records: where a chat path that differs from transformers' would differ first.

`proof.py` renders and encodes them both ways before a tokenizer's chat path is used (and caches the
verdict); facts.py proves its shortcuts on them (a fixed generation prompt, `LocalRules`).
"""

from __future__ import annotations

from typing import Any

from packsft.read.records import ASSISTANT, TOOL, USER, ChatExtras, Conversation

PROBE_MARK = "\ue002probe\ue003"  # the content of probe messages: no record holds it, no placeholder matches it
PROBES_VERSION = 4  # bumped when the probes change, so that cached proofs are made again

# Conversations where a chat path that differs from transformers' would differ first: special-token
# strings and template tags in content, whitespace at the content edges (pre-tokenizer merges across
# them), text the normalizer rewrites, emoji and CJK (tokens that split characters), empty content.
PROBE_CONVERSATIONS = [
    (("system", "You are helpful."), ("user", "Hi"), ("assistant", "Hello! How can I help?")),
    (("user", "Say <|im_end|><|endoftext|> now <|im_start|>assistant\nx <|user|> </s> [INST] <s>"),
     ("assistant", "<think>\nreasoning\n</think>\n\nThe answer <|im_end|> is 42.")),
    (("user", "\n\n  spaced  \n\n"), ("assistant", " \n leading and trailing \t\n"), ("user", "   "),
     ("assistant", "\n")),
    (("user", "cafe\u0301 Å ﬁ ｆｕｌｌ 中文字符 😀👍🏽 ١٢٣"), ("assistant", "e\u0301\u0301 Ελληνικά 한국어 🇫🇷 \u00a0x")),
    (("user", "<tool_response>\n{\"ok\": true}\n</tool_response>"), ("assistant", ""), ("user", "again"),
     ("assistant", "done")),
    (("assistant", "I start."), ("user", "def f(x):\n    return {'a': [1, 2]}  # c\n\tpass\n"),
     ("assistant", "```python\nprint(1)\n```")),
]


_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather <|im_end|> of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _call(name: str, arguments: Any, call_id: str) -> dict[str, Any]:
    return {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}


# Agentic and reasoning records: tools, tool calls (arguments as JSON text and as an object, several per turn),
# consecutive tool results, reasoning as a field and inside content, template kwargs.
PROBE_RECORDS = [
    Conversation(
        (("system", "You are helpful."), ("user", "Weather in Paris?"), ("assistant", ""), ("tool", '{"temp": 21}'),
         ("assistant", "It is 21 °C <|im_end|> in Paris.")),
        extras=ChatExtras((None, None, {"tool_calls": [_call("get_weather", '{"city": "Paris"}', "call_1")]},
                           {"tool_call_id": "call_1"}, None), (), [_WEATHER], None)),
    Conversation(
        (("user", "Paris and Rome?"), ("assistant", "Checking both."), ("tool", "21"), ("tool", "25"),
         ("assistant", "<think>\nCompare.\n</think>\n\nRome is warmer.")),
        extras=ChatExtras((None, {"tool_calls": [_call("get_weather", {"city": "Paris"}, "a"),
                                                 _call("get_weather", {"city": "Rome"}, "b")]}, None, None, None),
                          (), [_WEATHER], None)),
    Conversation(
        (("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")),
        extras=ChatExtras((None, {"reasoning_content": "Add two and two."}, None,
                           {"reasoning_content": "Three plus three."}), (), None, {"enable_thinking": False})),
    # A tool loop that reasons before each call (gpt-oss shows that reasoning in the next turn's prompt only).
    Conversation(
        (("user", "Compare Paris and Rome."), ("assistant", ""), ("tool", "21"), ("assistant", ""), ("tool", "25"),
         ("assistant", "Rome is warmer.")),
        extras=ChatExtras((None, {"thinking": "Paris first.", "reasoning_content": "Paris first.",
                                  "tool_calls": [_call("get_weather", {"city": "Paris"}, "call00001")]},
                           {"tool_call_id": "call00001"},
                           {"thinking": "Now Rome.", "reasoning_content": "Now Rome.",
                            "tool_calls": [_call("get_weather", {"city": "Rome"}, "call00002")]},
                           {"tool_call_id": "call00002"},
                           {"thinking": "25 > 21.", "reasoning_content": "25 > 21."}), (), [_WEATHER], None)),
]


def probe_records() -> list[Conversation]:
    return [Conversation(messages) for messages in PROBE_CONVERSATIONS] + PROBE_RECORDS


# The run of tool results a join is probed on: a call, then two results.
JOIN_PROBE: list[dict[str, Any]] = [
    {"role": USER, "content": "q"},
    {"role": ASSISTANT, "content": "", "tool_calls": [{"type": "function", "id": "i", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": TOOL, "content": "a"}, {"role": TOOL, "content": "b"}]


# Conversations of several questions, each answered after tool rounds with reasoning, with and without tools, a
# system message and thinking (facts.py proves `Windows` on them: a turn's rendering from the last user message on).
# The first holds one call per turn (Llama 3 refuses more), the second two in a turn and results in a row.
_LOOP_MESSAGES = (
    ("system", "You are an agent."), ("user", "Weather in Paris?"), ("assistant", ""), ("tool", "21"),
    ("assistant", "It is 21 °C."), ("user", "And Rome?"), ("assistant", "Checking."), ("tool", "25"),
    ("assistant", ""), ("tool", "26"), ("assistant", "<think>\nCompare.\n</think>\n\nRome is warmer."),
    ("user", "Thanks."), ("assistant", "You are welcome."), ("user", "Bye."), ("assistant", "Bye!"))
_LOOP_FIELDS = (
    None, None, {"reasoning_content": "Look it up.", "tool_calls": [_call("get_weather", '{"city": "Paris"}', "c1")]},
    {"tool_call_id": "c1"}, {"reasoning_content": "21 it is."}, None,
    {"tool_calls": [_call("get_weather", {"city": "Rome"}, "c2")]}, {"tool_call_id": "c2"},
    {"reasoning_content": "Once more.", "tool_calls": [_call("get_weather", {"city": "Rome"}, "c3")]},
    {"tool_call_id": "c3"}, None, None, {"reasoning_content": "Polite."}, None, None)
_PAIR_MESSAGES = (
    ("user", "Paris?"), ("assistant", "21."), ("user", "Rome and Oslo?"), ("assistant", ""), ("tool", "25"),
    ("tool", "9"), ("assistant", "Rome is warmer."), ("user", "Thanks."), ("assistant", "Welcome."))
_PAIR_FIELDS = (
    None, {"reasoning_content": "Known."}, None,
    {"reasoning_content": "Both.", "tool_calls": [_call("get_weather", {"city": "Rome"}, "c2"),
                                                   _call("get_weather", {"city": "Oslo"}, "c3")]},
    {"tool_call_id": "c2"}, {"tool_call_id": "c3"}, {"reasoning_content": "25 > 9."}, None, None)
WINDOW_PROBES = [
    Conversation(_LOOP_MESSAGES, extras=ChatExtras(_LOOP_FIELDS, (), [_WEATHER], None)),
    Conversation(_LOOP_MESSAGES[1:], extras=ChatExtras(_LOOP_FIELDS[1:], (), [_WEATHER], {"enable_thinking": False})),
    Conversation(_PAIR_MESSAGES, extras=ChatExtras(_PAIR_FIELDS, (), [_WEATHER], None)),
    Conversation((("system", "Be brief."), ("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4"),
                  ("user", "3+3?"), ("assistant", "6")),
                 extras=ChatExtras((None, None, {"reasoning_content": "Sum."}, None, None, None,
                                    {"reasoning_content": "Again."}), (), None, None)),
    Conversation((("user", "Hi"), ("assistant", "Hello"), ("user", "Again"), ("assistant", "<think>\nHm.\n</think>\n\nHi"),
                  ("user", "Bye"), ("assistant", "Bye")), extras=ChatExtras((), (), None, {"enable_thinking": False})),
]
