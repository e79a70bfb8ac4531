r"""Render conversations into token ids and per-token train flags, a batch at a time.

The seed notebook's role-token format (`--template roles`):

    BOS | <|system|> sys... | <|user|> question... | <|assistant|> answer... | <|user|> ... | EOS
     0  |   0         0     |   0        0         |   1             1      |   1  (ends the turn)

Agentic and reasoning data (records with `ChatExtras`) add no token to the vocabulary; the fields become
plain text (Hermes/Qwen style), so the layout above is unchanged:

    system turn      content + "\n\n# Tools\n\n<tools>\n" + one JSON line per tool + "\n</tools>"  (0)
    tool result      <|user|> "<tool_response>\n" content "\n</tool_response>"   (0; the <|user|> ends a turn: 1)
    assistant turn   <|assistant|> "<think>\n" reasoning "\n</think>\n\n" content
                     "\n<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>" ...   (1)
    weight 0 turn    its role token, content and the turn end after it: 0
    prompt-completion (plain text)  BOS prompt completion EOS   (0 | 0.. | 1.. | 1)

All message texts of a batch go through the Rust tokenizer in one call; the rendered layout is then
built with array arithmetic (no Python loop per token). Only conversations with extras take a Python
step, which writes their messages' texts and train flags. The result is a `RenderedBatch`: a flat
token table with CSR offsets per conversation and per message, which the splitter and the packer
read without copying.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from packsft.read.records import ASSISTANT, SYSTEM, TEXT, TOOL, USER, Conversation
from packsft.render.batch import (
    ASSISTANT_CODE,
    ROLE_CODES,
    SYSTEM_CODE,
    TEXT_CODE,
    TOOL_CODE,
    USER_CODE,
    Reject,
    RenderedBatch,
    count_special_strings,
    count_users_before,
)
from packsft.render.tokenizer import TOKEN_ID_DTYPE, PackTokenizer
from packsft.stats import ChatTurns

# Tool results open with the <|user|> role token (the vocabulary stays the seed notebook's: GPT-2's 50,262 ids).
ROLE_TOKEN_OF = {SYSTEM_CODE: SYSTEM, USER_CODE: USER, ASSISTANT_CODE: ASSISTANT, TOOL_CODE: USER}

# Agentic fields written as plain text (Hermes/Qwen style), so no token is added for them.
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>\n", "\n</tool_response>"
TOOLS_OPEN, TOOLS_CLOSE = "# Tools\n\n<tools>\n", "\n</tools>"
TOOLS_SEPARATOR = "\n\n"  # between a system message's own content and the tool definitions


class RoleRenderer:
    """The Renderer (batch.py) of `--template roles`: `render_roles` with the run's mask and unprompted policy.
    Role tokens render every record and rewrite no turn: nothing to count, nothing to prepare for `--turns`."""

    def __init__(self, tokenizer: PackTokenizer, *, mask: str = "assistant_only", unprompted: str = "keep") -> None:
        self.tokenizer, self.mask, self.unprompted = tokenizer, mask, unprompted

    @property
    def counts(self) -> ChatTurns | None:
        return None

    def prepare(self, conversations: list[Conversation]) -> list[Conversation]:
        return conversations

    def keep(self) -> None:
        """Nothing to keep: role tokens are rendered without analysis."""

    def render(self, conversations: list[Conversation], reject: Reject | None = None) -> RenderedBatch:
        return render_roles(conversations, self.tokenizer, mask=self.mask, unprompted=self.unprompted)


def render_roles(
    conversations: list[Conversation],
    tokenizer: PackTokenizer,
    *,
    mask: str = "assistant_only",
    unprompted: str = "keep",
) -> RenderedBatch:
    """Render with the role-token format (`--template roles`). Text documents (role TEXT): BOS + content + EOS, all but BOS trained
    (a plain prompt-completion row: BOS + prompt + completion + EOS, the prompt never trained).

    Args:
        mask: "all" trains every token but BOS; "assistant_only" trains assistant turns and their ends.
            Either way a message whose record says weight 0 (`Conversation.trains`) is not trained, nor is
            its role token or the turn end after it.
        unprompted: "mask" trains nothing before a conversation's first user message when it opens
            with an assistant turn; "keep" trains such turns like any other.
    """
    n = len(conversations)
    msg_counts, roles, texts, context_only = _messages(conversations)
    content, content_lens = tokenizer.encode_texts_flat(texts) if texts else \
        (np.zeros(0, TOKEN_ID_DTYPE), np.zeros(0, np.int64))

    conv_msg_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(msg_counts, out=conv_msg_offsets[1:])
    msg_conv = np.repeat(np.arange(n), msg_counts)
    first_msg = conv_msg_offsets[:-1]
    is_text = roles == TEXT_CODE
    conv_is_text = is_text[first_msg] if n else np.zeros(0, bool)

    # Layout: BOS, then per message [role token] content, then EOS. Text documents have no role token; their
    # BOS keeps their first token from being trained after whatever precedes them in a row.
    role_lens = (~is_text).astype(np.int64)
    span_lens = role_lens + content_lens
    heads = np.ones(n, np.int64)
    span_cum = np.concatenate([[0], np.cumsum(span_lens)])
    conv_lens = heads + (span_cum[conv_msg_offsets[1:]] - span_cum[first_msg]) + 1
    conv_offsets = np.concatenate([[0], np.cumsum(conv_lens)]).astype(np.int64)
    msg_starts = conv_offsets[msg_conv] + heads[msg_conv] + span_cum[:-1] - span_cum[first_msg][msg_conv]
    msg_ends = msg_starts + span_lens

    role_flag, content_flag, eos_flag, conv_unprompted = _train_flags(
        roles, conv_msg_offsets, msg_conv, conv_is_text, context_only, mask=mask, unprompted=unprompted
    )

    ids, flags = _lay_out(tokenizer, conv_offsets, heads == 1, msg_starts, roles, content, content_lens,
                          (role_flag, content_flag, eos_flag))

    return RenderedBatch(
        ids=ids, flags=flags, conv_offsets=conv_offsets, conv_msg_offsets=conv_msg_offsets,
        msg_starts=msg_starts.astype(np.int64), msg_ends=msg_ends.astype(np.int64), msg_roles=roles,
        sources=[c.source for c in conversations], unprompted=conv_unprompted,
        mode="roles", msg_headers=role_lens,  # the role token (none for text documents)
        special_strings=count_special_strings(texts, getattr(tokenizer, "special_tokens", ())),
    )


def _messages(conversations: list[Conversation]) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Per conversation its message count; per message its role code, text, and True where it is context only.

    Conversations with extras or tool results are rewritten by `role_texts`; the others (all of a plain
    chat dataset) are read as they are, so their rendering and its cost stay what they were.
    """
    n = len(conversations)
    msg_counts = np.fromiter((len(c.messages) for c in conversations), np.int64, n)
    roles = np.fromiter((ROLE_CODES[role] for c in conversations for role, _ in c.messages), np.uint8)
    rewrite = [c.extras is not None for c in conversations]
    if (roles == TOOL_CODE).any():
        tool_cum = np.concatenate([[0], np.cumsum(roles == TOOL_CODE)])
        ends = np.cumsum(msg_counts)
        has_tool = (tool_cum[ends] - tool_cum[ends - msg_counts]) > 0
        rewrite = [flag or tool for flag, tool in zip(rewrite, has_tool.tolist())]
    if not any(rewrite):
        texts = [content for c in conversations for _, content in c.messages]
        return msg_counts, roles, texts, np.zeros(len(roles), bool)
    rendered = [role_texts(c) if flag else (c.messages, (True,) * len(c.messages))
                for c, flag in zip(conversations, rewrite)]
    msg_counts = np.fromiter((len(messages) for messages, _ in rendered), np.int64, n)
    roles = np.fromiter((ROLE_CODES[role] for messages, _ in rendered for role, _ in messages), np.uint8)
    texts = [text for messages, _ in rendered for _, text in messages]
    context_only = np.fromiter((not flag for _, trains in rendered for flag in trains), bool, len(roles))
    return msg_counts, roles, texts, context_only


def role_texts(conversation: Conversation) -> tuple[tuple[tuple[str, str], ...], tuple[bool, ...]]:
    """The messages as `--template roles` renders them: (role, text) with tool results, reasoning, tool calls and
    tool definitions written as plain text (module docstring; README "Rendering"), and per message whether it
    may be trained. A system message is added to hold the tool definitions when the conversation has none (a
    text document has no turns: its tools are not rendered)."""
    messages, trains = [], []
    for index, (role, content) in enumerate(conversation.messages):
        if role == TOOL:
            content = TOOL_RESPONSE_OPEN + content + TOOL_RESPONSE_CLOSE
        elif role == ASSISTANT:
            content = _assistant_text(content, conversation.reasoning(index), conversation.tool_calls(index))
        messages.append((role, content))
        trains.append(conversation.trains(index))
    tools = conversation.tools
    if tools and messages[0][0] != TEXT:
        block = TOOLS_OPEN + "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools) + TOOLS_CLOSE
        if messages[0][0] == SYSTEM:
            system = messages[0][1]
            messages[0] = (SYSTEM, system + TOOLS_SEPARATOR + block if system else block)
        else:
            messages.insert(0, (SYSTEM, block))
            trains.insert(0, True)
    return tuple(messages), tuple(trains)


def _assistant_text(content: str, reasoning: str | None, calls: list[Mapping[str, Any]]) -> str:
    """Reasoning, content, then each tool call; a newline before a call that follows content or a call."""
    parts = [THINK_OPEN + reasoning + THINK_CLOSE] if reasoning is not None else []
    parts.append(content)
    for number, call in enumerate(calls):
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        call_json = json.dumps({"name": function.get("name"),
                                "arguments": json.loads(arguments) if isinstance(arguments, str) else arguments},
                               ensure_ascii=False)
        parts.append(("\n" if content or number else "") + TOOL_CALL_OPEN + call_json + TOOL_CALL_CLOSE)
    return "".join(parts)


def _lay_out(
    tokenizer: PackTokenizer, conv_offsets: np.ndarray, has_bos: np.ndarray, msg_starts: np.ndarray,
    roles: np.ndarray, content: np.ndarray, content_lens: np.ndarray,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Write BOS, role tokens, contents and EOS (and their flags) to their places in the flat table."""
    role_flag, content_flag, eos_flag = train
    is_text = roles == TEXT_CODE
    total = int(conv_offsets[-1])
    ids = np.empty(total, TOKEN_ID_DTYPE)
    flags = np.zeros(total, np.uint8)
    has_role = ~is_text
    role_ids = np.array([tokenizer.role_ids.get(ROLE_TOKEN_OF.get(code, ""), -1) for code in range(len(ROLE_CODES))],
                        TOKEN_ID_DTYPE)
    role_at, bos_at, eos_at = msg_starts[has_role], conv_offsets[:-1][has_bos], conv_offsets[1:] - 1
    ids[role_at] = role_ids[roles[has_role]]
    flags[role_at] = role_flag[has_role]
    # Every position that is no BOS, role token or EOS holds content, in order: a mask copy, not an int64 index per
    # token (half the time of this function on ShareGPT).
    is_content = np.ones(total, bool)
    is_content[role_at] = is_content[bos_at] = is_content[eos_at] = False
    ids[is_content] = content
    flags[is_content] = np.repeat(content_flag, content_lens)
    ids[bos_at] = tokenizer.bos_id if tokenizer.bos_id is not None else -1
    flags[bos_at] = 0
    ids[eos_at] = tokenizer.eos_id
    flags[eos_at] = eos_flag

    return ids, flags


def _train_flags(
    roles: np.ndarray, conv_msg_offsets: np.ndarray, msg_conv: np.ndarray, conv_is_text: np.ndarray,
    context_only: np.ndarray, *, mask: str, unprompted: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per message: the flag of its role token and of its content; per conversation: the EOS flag and
    whether it opens with an assistant turn no user message prompts. `context_only` marks the messages
    whose record says never to train them (weight 0)."""
    n = len(conv_msg_offsets) - 1
    first_msg, last_msg = conv_msg_offsets[:-1], conv_msg_offsets[1:] - 1
    is_text = roles == TEXT_CODE
    is_user = roles == USER_CODE
    is_assistant = roles == ASSISTANT_CODE
    users_before = count_users_before(roles, conv_msg_offsets, msg_conv)
    prev_role = np.full(len(roles), 255, np.uint8)
    not_first = np.ones(len(roles), bool)
    not_first[first_msg] = False
    prev_role[1:][not_first[1:]] = roles[:-1][not_first[1:]]
    unprompted_turn = is_assistant & (users_before == 0)
    conv_unprompted = np.zeros(n, bool)
    np.logical_or.at(conv_unprompted, msg_conv, unprompted_turn)
    # Under --unprompted mask, everything before the first user message of such a conversation is
    # context only, and so is the turn end that follows it. So is a weight-0 message: under
    # assistant_only only an assistant one changes anything (a user message's role token after an
    # assistant turn ends that turn, which still trains; the <|assistant|> after it opens a turn).
    masked = context_only if mask == "all" else context_only & is_assistant
    if unprompted == "mask":
        masked = masked | (conv_unprompted[msg_conv] & (users_before == 0) & ~is_user)
    prev_masked = np.zeros(len(roles), bool)
    prev_masked[1:] = masked[:-1] & not_first[1:]

    if mask == "all":
        role_flag = ~masked & ~prev_masked
        content_flag = ~masked
        eos_flag = ~masked[last_msg]
    else:
        # A tool result's <|user|> after an assistant turn ends that turn, as a user message's does.
        ends_turn = (is_user | (roles == TOOL_CODE)) & (prev_role == ASSISTANT_CODE)
        role_flag = (is_assistant | ends_turn) & ~masked & ~prev_masked
        content_flag = is_assistant & ~masked
        eos_flag = is_assistant[last_msg] & ~masked[last_msg]
    content_flag = content_flag | (is_text & ~context_only)
    eos_flag = eos_flag | (conv_is_text & ~context_only[last_msg])

    return role_flag, content_flag, eos_flag, conv_unprompted


