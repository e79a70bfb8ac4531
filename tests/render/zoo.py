"""The template zoo: real chat templates (../shared/templates) on tokenizers built like their models', records of
every shape packsft reads, and an oracle of what each rendering trains, written apart from packsft's span code.

    family table   markers special or not as in the real model, BOS/EOS, generation_config.json's eos list,
                   and the oracle: a regex whose group `gen` is one span the model generates
    records        plain, system, multi-turn, tools (dict and JSON-text arguments, content null, parallel calls,
                   results that need escaping), reasoning_content / thinking / think-in-content, template kwargs
    check          per record: packsft's ids equal apply_chat_template's (or differ as documented: a stop token
                   appended where the template renders none), its flags equal the oracle's, and it is rejected
                   only where apply_chat_template refuses it

The oracle reads the rendering's text only: every `gen` match is trained from where the generation prompt ends
(the header the regex matched, plus as much of what the template's generation prompt adds after that header as
the rendering holds there: Qwen3's and Gemma 4's empty thinking blocks) through the stop token the match ends with. Token i is trained where its first character
lies in such a span. Used by tests/render/test_template_zoo.py and scripts/template_zoo.py (the table).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packsft.read.records import ROLE_ALIASES, Conversation, RecordRejected
from packsft.read.shapes import to_conversation

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TEMPLATES = SHARED / "templates"
BASE_BPE = SHARED / "tokenizers" / "gpt2"


@dataclass(frozen=True)
class Family:
    """One model family's template and tokenizer facts, as its model ships them.

    Args:
        special: markers the real tokenizer marks special (control tokens).
        plain: markers the real tokenizer adds as ordinary tokens (Qwen's `<think>`, `<tool_call>`).
        stops: generation_config.json's eos_token_id (as strings), where the model lists more than its EOS.
        header: regex of what precedes each generated span (the assistant header, or what the model continues
            after, such as a tool result inside one model turn).
        ends: regex of the tokens a generated span ends with (the stop token the model emits).
        appends_stop: the template renders no stop after the last turn; packsft appends EOS there (documented).
        continues: regex of what the model continues after without a generation prompt (a tool result that a
            template renders inside the model's turn).
    """

    name: str
    file: str
    special: tuple[str, ...]
    eos: str
    header: str
    ends: str
    plain: tuple[str, ...] = ()
    bos: str | None = None
    stops: tuple[str, ...] = ()
    appends_stop: bool = False
    continues: str | None = None

    @property
    def turn(self) -> re.Pattern[str]:
        opening = f"(?P<header>{self.header})" + (f"|(?:{self.continues})" if self.continues else "")
        return re.compile(f"(?:{opening})(?P<gen>.*?(?:{self.ends}))", re.DOTALL)


_LLAMA = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
          "<|eom_id|>", "<|python_tag|>")
_CHATML_HEADER, _CHATML_END = re.escape("<|im_start|>assistant\n"), re.escape("<|im_end|>")
_MISTRAL_HEADER = r"(?:\[/INST\]|\[/TOOL_RESULTS\])(?!\[INST\]|\[TOOL_RESULTS\]|\[AVAILABLE_TOOLS\])"
_R1_TOOLS = tuple(f"<｜tool▁{part}｜>" for part in (
    "calls▁begin", "calls▁end", "call▁begin", "call▁end", "sep", "outputs▁begin", "outputs▁end", "output▁begin",
    "output▁end"))

FAMILIES = [
    Family("llama3.1", "meta-llama-Llama-3.1-8B-Instruct.jinja", _LLAMA, "<|eot_id|>",
           re.escape("<|start_header_id|>assistant<|end_header_id|>\n\n"), r"<\|eot_id\|>|<\|eom_id\|>",
           bos="<|begin_of_text|>", stops=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family("llama3.2", "meta-llama-Llama-3.2-3B-Instruct.jinja", _LLAMA, "<|eot_id|>",
           re.escape("<|start_header_id|>assistant<|end_header_id|>\n\n"), r"<\|eot_id\|>|<\|eom_id\|>",
           bos="<|begin_of_text|>", stops=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    Family("qwen2.5", "Qwen-Qwen2.5-7B-Instruct.jinja", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), "<|im_end|>",
           _CHATML_HEADER, _CHATML_END, plain=("<tool_call>", "</tool_call>"), stops=("<|im_end|>", "<|endoftext|>")),
    Family("qwen3", "Qwen-Qwen3-0.6B.jinja", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), "<|im_end|>",
           _CHATML_HEADER, _CHATML_END,
           plain=("<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>", "</tool_response>"),
           stops=("<|im_end|>", "<|endoftext|>")),
    Family("r1-distill-qwen", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
           ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"), "<｜end▁of▁sentence｜>",
           r"<｜Assistant｜>|<｜tool▁outputs▁end｜>", "<｜end▁of▁sentence｜>",
           plain=("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", *_R1_TOOLS), bos="<｜begin▁of▁sentence｜>"),
    Family("gemma2", "google-gemma-2-2b-it.jinja", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<eos>",
           re.escape("<start_of_turn>model\n"), "<end_of_turn>", bos="<bos>", stops=("<eos>", "<end_of_turn>")),
    # Gemma 4 renders a tool call, its results and the answer as one model turn; the model stops after a call by
    # emitting <|tool_response> (an assumption: the stop list of the real generation_config is not at hand).
    Family("gemma4", "google-gemma-4-31B-it.jinja",
           ("<bos>", "<eos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>",
            "<|tool_response>", "<tool_response|>", "<|tool>", "<tool|>", "<|think|>", '<|"|>'), "<eos>",
           re.escape("<|turn>model\n"), r"<turn\|>|<\|tool_response>", bos="<bos>",
           stops=("<eos>", "<turn|>", "<|tool_response>"), continues=r"<tool_response\|>(?!<\|tool_response>)"),
    Family("mistral-small-3.2", "Mistral-Small-3.2-24B-Instruct-2506.jinja",
           ("<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CONTENT]",
            "[CALL_ID]", "[ARGS]", "[IMG]"), "</s>", _MISTRAL_HEADER, "</s>", bos="<s>"),
    Family("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407.jinja",
           ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]", "[/TOOL_RESULTS]"), "</s>", _MISTRAL_HEADER, "</s>", bos="<s>"),
    Family("phi3.5", "microsoft-Phi-3.5-mini-instruct.jinja",
           ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"), "<|endoftext|>",
           re.escape("<|assistant|>\n"), re.escape("<|end|>"), bos="<s>",
           stops=("<|end|>", "<|assistant|>", "<|endoftext|>")),
    # SmolLM3 renames Llama 3's reserved tokens, all special, to <think> and </think>.
    Family("smollm3", "HuggingFaceTB-SmolLM3-3B.jinja",
           ("<|im_start|>", "<|im_end|>", "<|end_of_text|>", "<think>", "</think>"), "<|im_end|>", _CHATML_HEADER,
           _CHATML_END),
    Family("gpt-oss", "openai-gpt-oss-120b.jinja",
           ("<|startoftext|>", "<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>",
            "<|call|>", "<|constrain|>"), "<|return|>",
           re.escape("<|start|>assistant"), r"<\|return\|>|<\|call\|>|<\|end\|>(?!<\|start\|>assistant)",
           stops=("<|return|>", "<|endoftext|>", "<|call|>")),
    Family("glm4.6", "GLM-4.6.jinja",
           ("<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
           "<|endoftext|>", re.escape("<|assistant|>"), r"<\|user\|>|<\|observation\|>|<\|endoftext\|>",
           plain=("<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>", "<arg_value>",
                  "</arg_value>", "<tool_response>", "</tool_response>", "<tools>", "</tools>"),
           stops=("<|endoftext|>", "<|user|>", "<|observation|>"), appends_stop=True),
    Family("command-r7b", "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
           ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>", "<|START_THINKING|>", "<|END_THINKING|>", "<|START_ACTION|>", "<|END_ACTION|>",
            "<|START_TOOL_RESULT|>", "<|END_TOOL_RESULT|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"),
           "<|END_OF_TURN_TOKEN|>", re.escape("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
           re.escape("<|END_OF_TURN_TOKEN|>"), bos="<BOS_TOKEN>"),
]
BY_NAME = {family.name: family for family in FAMILIES}


def build_tokenizer(family: Family, folder: Path) -> Path:
    """A tokenizer folder for the family: GPT-2's BPE plus the family's markers (special where the real model's
    are), its BOS/EOS, its template, and its generation_config.json where the model lists several stops."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(BASE_BPE)
    hf.add_tokens(list(family.plain), special_tokens=False)
    tokens: dict[str, Any] = {"eos_token": family.eos, "additional_special_tokens": [
        t for t in family.special if t not in (family.bos, family.eos)]}
    if family.bos:
        tokens["bos_token"] = family.bos
    hf.add_special_tokens(tokens)
    hf.chat_template = (TEMPLATES / family.file).read_text(encoding="utf-8")
    hf.save_pretrained(folder)
    if family.stops:
        ids = [hf.convert_tokens_to_ids(token) for token in family.stops]
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": ids}))
    return folder


# -- records -----------------------------------------------------------------------------------------------------
_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city."}},
                   "required": ["city"]}}}
_TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _call(name: str, city: str, call_id: str, text: bool = False) -> dict[str, Any]:
    arguments: Any = json.dumps({"city": city}) if text else {"city": city}
    return {"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}}


def _u(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _s(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def _a(text: str | None, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **fields}


def _tool(text: str, call_id: str, name: str = "get_weather") -> dict[str, Any]:
    return {"role": "tool", "content": text, "tool_call_id": call_id, "name": name}


# Call ids are 9 alphanumerics: Mistral's templates refuse others.
RECORDS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [_u("What is 2+2?"), _a("It is 4.")]},
    "system": {"messages": [_s("Be brief."), _u("Name a color."), _a("Blue.")]},
    "multi": {"messages": [_s("You are kind."), _u("Hi there"), _a("Hello! How can I help?"), _u("Tell a joke."),
                           _a("Why did the chicken cross the road?"), _u("Why?"), _a("To get to the other side.")]},
    "multi_no_system": {"messages": [_u("One"), _a("Two"), _u("Three"), _a("Four")]},
    "tools_dict": {"tools": [_WEATHER], "messages": [
        _s("Use tools."), _u("Weather in Paris?"), _a(None, tool_calls=[_call("get_weather", "Paris", "call00001")]),
        _tool('{"temp_c": 21}', "call00001"), _a("It is 21 C in Paris.")]},
    "tools_json": {"tools": [_WEATHER], "messages": [
        _u("Weather in Rome?"), _a("", tool_calls=[_call("get_weather", "Rome", "call00002", text=True)]),
        _tool('{"temp_c": 25, "sky": "clear\\nsunny"}', "call00002"), _a("25 C and clear.")]},
    "tools_system_escaped": {"tools": [_WEATHER], "messages": [
        _s("Be exact."), _u("Weather in Oslo?"), _a(None, tool_calls=[_call("get_weather", "Oslo", "call00003", True)]),
        _tool('He said "cold"\nand left.', "call00003"), _a("Cold in Oslo.")]},
    "parallel": {"tools": [_WEATHER, _TIME], "messages": [
        _u("Weather and time in Lima?"),
        _a(None, tool_calls=[_call("get_weather", "Lima", "call0000a"), _call("get_time", "Lima", "call0000b")]),
        _tool("18 C", "call0000a"), _tool("09:00", "call0000b", "get_time"), _a("18 C at 09:00.")]},
    "tools_two_users": {"tools": [_WEATHER], "messages": [
        _s("Use tools."), _u("Hi"), _a("Hello."), _u("Weather in Bern?"),
        _a(None, tool_calls=[_call("get_weather", "Bern", "call0000c")]), _tool("12 C", "call0000c"),
        _a("12 C in Bern.")]},
    "reasoning": {"messages": [_u("2+2?"), _a("4", reasoning_content="Add two and two."), _u("And 3+3?"),
                               _a("6", reasoning_content="Three plus three is six.")]},
    "thinking": {"messages": [_u("Capital of France?"), _a("Paris.", thinking="It is Paris.")]},
    "think_in_content": {"messages": [_u("5*5?"), _a("<think>\nFive times five.\n</think>\n\n25"), _u("And 6*6?"),
                                      _a("<think>\nSix times six.\n</think>\n\n36")]},
    "no_thinking_kwarg": {"chat_template_kwargs": {"enable_thinking": False},
                          "messages": [_u("Hi"), _a("Hello."), _u("Bye"), _a("Goodbye.")]},
    "tool_trace_thinking": {"tools": [_WEATHER], "messages": [
        _s("Plan first."), _u("Compare Paris and Rome."),
        _a(None, thinking="Paris first.", tool_calls=[_call("get_weather", "Paris", "call0000d")]),
        _tool("21", "call0000d"),
        _a(None, thinking="Now Rome.", tool_calls=[_call("get_weather", "Rome", "call0000e")]),
        _tool("25", "call0000e"), _a("Rome is warmer.", thinking="25 > 21.")]},
}
# The quick loop's subset (tests/render/test_template_zoo.py runs the rest under the slow marker).
QUICK_SHAPES = ("multi", "tools_dict", "reasoning")


def conversation(record: dict[str, Any]) -> Conversation:
    """The record as packsft reads it (an OpenAI-shaped row)."""
    messages, extras = to_conversation("openai", record, ROLE_ALIASES)
    return Conversation(messages, extras=extras)


# -- the oracle ----------------------------------------------------------------------------------------------------
@dataclass
class Expected:
    """What the record must pack as; `text` None where apply_chat_template refuses the record."""

    text: str | None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    refusal: str = ""


def expected(family: Family, hf: Any, conv: Conversation) -> Expected:
    """apply_chat_template's rendering of the record (as packsft reads it), its ids, and the oracle's flags."""
    messages, tools, kwargs = conv.chat_messages(), conv.tools, conv.template_kwargs()
    render: Callable[..., str] = hf.apply_chat_template
    try:
        text = render(messages, tools=tools, tokenize=False, **kwargs)
    except Exception as exc:  # the template refuses the record: packsft must refuse it too
        return Expected(None, refusal=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if family.appends_stop and messages[-1]["role"] == "assistant":
        text += family.eos
    prompt = _prompt_after_header(family, render, messages, tools, kwargs)
    # Boundaries of the prompt's own tokens: the rendering holds a prompt token only where it holds all of it.
    cuts = [0, *(end for _, end in hf(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])]
    encoded = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoded["input_ids"], np.int64)
    starts = np.asarray([start for start, _ in encoded["offset_mapping"]], np.int64)
    flags = np.zeros(len(ids), np.uint8)
    for match in family.turn.finditer(text):
        lo, hi = match.start("gen"), match.end("gen")
        held = 0  # the part of the prompt the rendering holds here, in whole tokens of both
        while match.group("header") and held < min(len(prompt), hi - lo) and text[lo + held] == prompt[held]:
            held += 1
        held = max(cut for cut in cuts if cut <= held)
        first = int(np.searchsorted(starts, lo + held, side="right")) - 1
        flags[max(first, 0):int(np.searchsorted(starts, hi))] = 1
    if len(flags):
        flags[0] = 0
    return Expected(text, ids, flags)


def _prompt_after_header(family: Family, render: Callable[..., str], messages: list[dict[str, Any]], tools: Any,
                         kwargs: dict[str, Any]) -> str:
    """What the generation prompt adds after the header the oracle matches (Qwen3's empty think block with
    enable_thinking false): the rest of the prompted rendering of the first user message."""
    first = next((m for m in messages if m["role"] == "user"), None)
    if first is None:
        return ""
    try:
        prompted = render([first], tools=tools, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:
        return ""
    headers = list(re.finditer(family.header, prompted))
    return prompted[headers[-1].end():] if headers else ""


# -- one record through packsft ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One record of one family: packed (not rejected), ids exact, flags as the oracle's, refused by both."""

    family: str
    shape: str
    refused_by_template: bool
    packed: bool
    ids_exact: bool
    masks_ok: bool
    detail: str = ""

    @property
    def ok(self) -> bool:
        if self.refused_by_template:
            return not self.packed
        return self.packed and self.ids_exact and self.masks_ok


def check(family: Family, tokenizer: Any, hf: Any, shape: str, record: dict[str, Any]) -> Outcome:
    """Render the record with packsft and compare with apply_chat_template and the oracle."""
    from packsft.render.chat import render_chat

    conv = conversation(record)
    want = expected(family, hf, conv)
    rejected: list[str] = []
    try:
        batch = render_chat([conv], tokenizer, reject=lambda _, reason: rejected.append(reason))
    except RecordRejected as exc:  # pragma: no cover - reject is given
        rejected.append(exc.reason)
        batch = None
    packed = not rejected and batch is not None and len(batch.ids) > 0
    if want.text is None:
        return Outcome(family.name, shape, True, packed, True, True,
                       "" if not packed else f"packed a record the template refuses ({want.refusal})")
    if not packed:
        return Outcome(family.name, shape, False, False, False, False, f"rejected: {rejected[0] if rejected else '?'}")
    ids, flags = batch.ids.astype(np.int64), batch.flags
    ids_exact = np.array_equal(ids, want.ids)
    masks_ok = ids_exact and np.array_equal(flags, want.flags)
    detail = ""
    if not ids_exact:
        detail = f"ids differ: {_first_difference(hf, ids, want.ids)}"
    elif not masks_ok:
        detail = _flag_difference(hf, ids, flags, want.flags)
    return Outcome(family.name, shape, False, True, ids_exact, masks_ok, detail)


def _first_difference(hf: Any, got: np.ndarray, want: np.ndarray) -> str:
    n = min(len(got), len(want))
    at = int(np.argmax(got[:n] != want[:n])) if n and (got[:n] != want[:n]).any() else n
    return (f"at token {at}: packsft {hf.decode(got[max(0, at - 3):at + 5].tolist())!r} vs "
            f"template {hf.decode(want[max(0, at - 3):at + 5].tolist())!r}")


def trained_runs(hf: Any, ids: np.ndarray, flags: np.ndarray) -> list[str]:
    """The decoded runs of trained tokens."""
    index = np.flatnonzero(flags)
    runs = np.split(index, np.flatnonzero(np.diff(index) > 1) + 1) if len(index) else []
    return [hf.decode(ids[run].tolist()) for run in runs]


def _flag_difference(hf: Any, ids: np.ndarray, got: np.ndarray, want: np.ndarray) -> str:
    return f"trained {trained_runs(hf, ids, got)!r}, oracle {trained_runs(hf, ids, want)!r}"
