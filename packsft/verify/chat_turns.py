"""What a `--template chat` output under `--mask assistant_only` trains: what the model generates after the
generation prompt, and nothing else. Pure checks on arrays; `packsft verify` runs them per shard.

Messages are read by the template's own header tokens (dataset.json `tokenizer.chat_markers`); a label is the
flag of the token it predicts:

    <|im_start|> user \\n  q q <|im_end|> \\n <|im_start|> assistant \\n  a a a <|im_end|> \\n <|im_start|> user ..
    header_start user_role                  header_start assistant_role        end_of_turn
         0        0    0  0 0     0      0       0          0       0  1 1 1      1      0       0        0
         B        C    C  C C     C              A          A          E E E      D               B        C

    A  a trained generation prompt: the header_start or role token of an assistant message
    B  a trained next-turn token: the header_start of a user, system or tool message (after an end-of-turn,
       the model would learn to open the next turn instead of stopping)
    C  trained user text: any other token of a user, system or tool message
    D  an untrained stop: an assistant message's end-of-turn untrained while its answer is trained
    E  an untrained answer: an untrained token between trained ones of an answer, or an assistant message
       untrained as a whole (answer and end-of-turn) that is no earlier turn repeated as context

A header from content (`hi<|im_end|>\\n<|im_start|>assistant\\nI am evil` in a user message) shows as E (a fake
assistant message, untrained), one in an assistant message as B and C (a fake user message, trained).

Templates where the model itself writes inside its turn: an assistant header that follows a trained label of an
assistant message which is no stop token is the model's, not a generation prompt (gpt-oss writes
`<|end|><|start|>assistant<|channel|>final` after its analysis); text inside an assistant message after a trained
stop token is the environment's, not a hole (Gemma 4 renders tool responses inside the model's turn). Stop tokens
are dataset.json `tokenizer.stop_ids` (the end-of-turn where absent).

Repeated context: a piece that opens at a tool result, or at the turn after one, repeats masked the assistant
turn that called the tools (pack/context.py). That turn is context, not a lost answer, when it comes before the
first trained label of its segment, the message after it is no assistant message, it is the last untrained
assistant message before that label (a piece repeats one exchange), and the shard trains the same turn elsewhere:
an assistant message that opens with the same KEY_TOKENS tokens (or is the same, when shorter) and trains one
of them (the whole turn, or the first piece of a turn cut across pieces; pieces of a conversation share its shard).

Exempt: under `--unprompted mask`, the assistant messages before the first user message of a segment; where the
records keep some assistant turns untrained (`context_turns`: `weight: 0`, a prompt-completion's prompt, `--turns
last|inference`), every assistant message untrained as a whole. What the arrays cannot tell, `--deep` can (it
re-packs and compares the masks): an answer untrained up to a trained end-of-turn reads like the continuation of
a turn cut right before its end-of-turn (pack/cuts.py), whose masked text before the cut may be empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packsft.pack.rows import row_lengths, segment_starts
from packsft.verify.violations import Violation, blocks, row_violations
from packsft.write.layout import LOSS_MASK_NPY

KEY_TOKENS = 32  # tokens from its header that identify an assistant turn, to find a repeat's trained copy

GENERATION_PROMPT = ("the generation prompt of an assistant message (header id {header}, role id {role}) is "
                     "trained: the model would learn to write what the inference prompt already holds")
NEXT_TURN = ("the header token (id {header}) that opens a user, system or tool message is trained: after its "
             "end-of-turn the model would learn to open the next turn instead of stopping")
USER_TEXT = ("a token of a user, system or tool message is trained: the model would learn the text it is given "
             "(a message header from content, or a mask that trains prompts)")
UNTRAINED_STOP = ("an assistant message's end-of-turn token (id {end}) is not trained while its answer is: the "
                  "model would not learn to stop")
ANSWER_HOLE = "part of an assistant answer is not trained: an untrained token between trained ones of one message"
UNTRAINED_ANSWER = ("an assistant message is not trained at all (neither its answer nor its end-of-turn) and is no "
                    "earlier turn repeated as context: an answer the mask dropped, or a message header from content")
ORDER = (GENERATION_PROMPT, NEXT_TURN, USER_TEXT, UNTRAINED_STOP, ANSWER_HOLE, UNTRAINED_ANSWER)


@dataclass(frozen=True)
class ChatMarkers:
    """The ids a chat-template output's messages are read by (dataset.json `tokenizer.chat_markers`)."""

    header_start: int  # the special token that opens every message (<|im_start|>)
    user_role: int  # the token after it in a user header ("user")
    assistant_role: int  # ... in an assistant header ("assistant")
    end_of_turn: int  # the special token that ends an assistant turn (<|im_end|>)
    stops: tuple[int, ...] = ()  # the tokens the model stops at (dataset.json `tokenizer.stop_ids`)

    @staticmethod
    def of(markers: object, template: str | None, stop_ids: object = None) -> ChatMarkers | None:
        if template != "chat" or not isinstance(markers, dict):
            return None
        try:
            header, user, assistant, end = (int(markers[key]) for key in
                                            ("header_start", "user_role", "assistant_role", "end_of_turn"))
            stops = tuple(int(i) for i in stop_ids) if isinstance(stop_ids, list) else ()
        except (KeyError, TypeError, ValueError):
            return None
        return ChatMarkers(header, user, assistant, end, stops or (end,))


def check_chat_turns(
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    segment_lengths: np.ndarray,
    row_segments: np.ndarray,
    *,
    markers: ChatMarkers,
    unprompted: str,
    context_turns: bool = False,
) -> list[Violation]:
    """Classes A to E of the module docstring in one shard's rows (offsets must be valid: `check_offsets`).

    Args:
        unprompted: the pack's `--unprompted`; under `mask` the assistant messages before a segment's first
            user message are untrained by design.
        context_turns: the records keep some assistant turns untrained (the shard counts
            `assistant_turns_untrained`): an assistant message untrained as a whole is no fault.
    """
    bad: dict[str, list[np.ndarray]] = {message: [] for message in ORDER}
    repeats, repeat_keys, copy_keys = [], [], []  # untrained turns that may be context; the turns pieces train
    for begin, block_tokens, block_mask, lengths, offsets in blocks(tokens, loss_mask, segment_lengths, row_segments):
        m = Messages(block_tokens, block_mask, lengths, offsets, markers)
        found, repeat = _answer_checks(m, unprompted, context_turns)
        for message, rows in {**_prompt_checks(m), **found}.items():
            bad[message].append(begin + rows)
        repeats.append(begin + repeat // m.width)
        repeat_keys.append(m.turn_keys(repeat))
        copy_keys.append(_key_hashes(m.turn_keys(m.assistant_headers, trained_only=True)))
    if sum(len(rows) for rows in repeats):
        lost = ~_has_copy(np.concatenate(repeat_keys), np.concatenate(copy_keys))
        bad[UNTRAINED_ANSWER].append(np.concatenate(repeats)[lost])
    ids = {"header": markers.header_start, "role": markers.assistant_role, "end": markers.end_of_turn}
    return [v for message in ORDER if bad[message]
            for v in row_violations(LOSS_MASK_NPY, np.concatenate(bad[message]), message.format(**ids))]


def _key_hashes(keys: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of turn keys (a shard may hold millions of turns: 8 bytes each, not the key)."""
    powers = np.cumprod(np.full(KEY_TOKENS, 1_000_003, np.uint64)) // np.uint64(1_000_003)
    return (keys.astype(np.uint64) * powers[None, :]).sum(axis=1, dtype=np.uint64)


def _has_copy(keys: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """Per row of `keys` (a repeated turn's first ids): whether `copies` (the key hashes of the assistant messages
    the shard trains) hold it, or a prefix of it (the first piece of a turn cut across pieces)."""
    lengths = (keys != -1).sum(axis=1)
    found = np.zeros(len(keys), bool)
    for prefix in range(3, KEY_TOKENS + 1):  # header_start, role token, and at least one token more
        probes = np.where(np.arange(KEY_TOKENS)[None, :] < prefix, keys, -1)
        found |= (prefix <= lengths) & np.isin(_key_hashes(probes), copies)
    return found


class Messages:
    """The messages of a block of rows, read by the header tokens: per-position facts (rows x L+1 arrays) and
    sorted flat positions (row * width + column) of headers, segments and assistant end-of-turns."""

    def __init__(self, tokens: np.ndarray, loss_mask: np.ndarray, segment_lengths: np.ndarray,
                 row_segments: np.ndarray, markers: ChatMarkers) -> None:
        rows, width = tokens.shape
        self.tokens, self.markers, self.width = tokens.reshape(-1), markers, width
        columns = np.arange(width, dtype=np.int32)[None, :]
        inside = columns < row_lengths(segment_lengths, row_segments)[:, None]
        self.trained = np.zeros((rows, width), bool)  # trained[r, i]: token i of row r is a trained label
        self.trained[:, 1:] = loss_mask != 0
        self.trained &= inside
        is_header = inside & (tokens == markers.header_start)
        opens_answer = np.zeros((rows, width), bool)
        opens_answer[:, :-1] = is_header[:, :-1] & (tokens[:, 1:] == markers.assistant_role)
        # The last event at or before each position, as 4 * column + kind: 0 a segment start, 1 a header, 3 an
        # assistant header. Every row starts with a segment at column 0.
        starts = segment_starts(segment_lengths, row_segments)
        seg_rows = np.repeat(np.arange(rows), np.diff(row_segments))
        events = np.full((rows, width), -1, np.int32)
        events[seg_rows, starts] = 4 * starts
        events = np.where(is_header, 4 * columns + np.where(opens_answer, 3, 1), events)
        last = np.maximum.accumulate(events, axis=1)
        self.in_message = inside & (last & 3 != 0)
        self.assistant = inside & (last & 3 == 3)
        self.head = self.in_message & (columns <= (last >> 2) + 1)  # header_start and role token
        self.header = last >> 2  # the column of the position's header, where in_message
        self.headers = np.flatnonzero(is_header)
        self.assistant_headers = np.flatnonzero(opens_answer)
        self.seg_starts = seg_rows * width + starts
        self.seg_ends = self.seg_starts + segment_lengths
        self.ends = np.flatnonzero(self.assistant & ~self.head & (tokens == markers.end_of_turn))
        self.running = np.concatenate([[0], np.cumsum(self.trained, dtype=np.int64)])

    def trained_in(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Trained labels at flat positions lo .. hi (excluded)."""
        return self.running[hi] - self.running[lo]

    def segment_of(self, at: np.ndarray) -> np.ndarray:
        """The index of the segment that holds each flat position."""
        return np.searchsorted(self.seg_starts, at, side="right") - 1

    def next_header(self, at: np.ndarray) -> np.ndarray:
        """The flat position of the first header after each position (the block's size where none)."""
        found = np.searchsorted(self.headers, at, side="right")
        return np.append(self.headers, len(self.tokens))[found]

    def turn_keys(self, heads: np.ndarray, trained_only: bool = False) -> np.ndarray:
        """The first KEY_TOKENS ids of the assistant messages whose headers are at flat positions `heads`, up to
        their end-of-turn (or the next header, or their segment's end), -1 after; with `trained_only`, of those
        that train one of them."""
        ends = np.append(self.ends, len(self.tokens))[np.searchsorted(self.ends, heads)] + 1
        ends = np.minimum(np.minimum(ends, self.next_header(heads)), self.seg_ends[self.segment_of(heads)])
        if trained_only:
            keep = self.trained_in(heads, np.minimum(ends, heads + KEY_TOKENS)) > 0
            heads, ends = heads[keep], ends[keep]
        at = heads[:, None] + np.arange(KEY_TOKENS)[None, :]
        return np.where(at < ends[:, None], self.tokens[np.minimum(at, len(self.tokens) - 1)].astype(np.int64), -1)


def _prompt_checks(m: Messages) -> dict[str, np.ndarray]:
    """A, B and C (rows of the block): nothing of a header, nor of a user, system or tool message, is trained.
    An assistant header the model writes itself is no generation prompt: it continues a trained assistant message
    past a token that is no stop (gpt-oss opens its final channel after its analysis: `<|end|><|start|>assistant`)."""
    prompts = np.flatnonzero(m.assistant & m.head & m.trained)
    before = prompts - prompts % m.width + m.header.reshape(-1)[prompts] - 1  # the token before the header
    continued = ((before + 1) % m.width > 0) & m.trained.reshape(-1)[before] & m.assistant.reshape(-1)[before]
    continued &= ~np.isin(m.tokens[before], m.markers.stops)
    others = m.in_message & ~m.assistant & m.trained
    opens = others & (m.header == np.arange(m.width)[None, :])
    return {GENERATION_PROMPT: np.unique(prompts[~continued] // m.width),
            NEXT_TURN: np.flatnonzero(opens.any(axis=1)),
            USER_TEXT: np.flatnonzero((others & ~opens).any(axis=1))}


def _holes(m: Messages) -> np.ndarray:
    """Flat starts of a second run of labels in one assistant message, where the run before it does not end at a
    stop (after a stop, the text inside the turn is the environment's: Gemma 4's tool responses)."""
    labels = m.trained & m.assistant & ~m.head
    starts, ends = labels.copy(), labels.copy()
    starts[:, 1:] &= ~m.trained[:, :-1]
    ends[:, :-1] &= ~m.trained[:, 1:]
    runs, run_ends = np.flatnonzero(starts), np.flatnonzero(ends)
    run_heads = runs - runs % m.width + m.header.reshape(-1)[runs]
    holes = runs[1:][run_heads[1:] == run_heads[:-1]]
    stopped = np.isin(m.tokens[run_ends[np.searchsorted(run_ends, holes) - 1]], m.markers.stops)
    return holes[~stopped]


def _answer_checks(m: Messages, unprompted: str, context_turns: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """D and E (rows of the block); and the flat header positions of the untrained assistant messages that may
    be repeated context, for `check_chat_turns` to look for their trained copies."""
    ends = m.ends
    heads = ends - ends % m.width + m.header.reshape(-1)[ends]
    stop_untrained = ~m.trained.reshape(-1)[ends]
    answered = m.trained_in(heads + 2, ends) > 0
    holes = _holes(m)
    unanswered = stop_untrained & ~answered & (not context_turns)
    segments = m.segment_of(ends)
    if unprompted == "mask":
        users = m.headers[m.tokens[np.minimum(m.headers + 1, len(m.tokens) - 1)] == m.markers.user_role]
        unanswered &= np.searchsorted(users, ends) > np.searchsorted(users, m.seg_starts[segments])
    # Repeated context (module docstring): before the segment's first label, the last such, before no assistant.
    early = unanswered & (m.trained_in(m.seg_starts[segments], ends) == 0)
    following = m.next_header(ends)
    before_other = (following < m.seg_ends[segments]) & ~np.isin(following, m.assistant_headers)
    last = np.ones(len(ends), bool)
    early_at = np.flatnonzero(early)
    last[early_at[:-1]] = segments[early_at[1:]] != segments[early_at[:-1]]
    repeat = early & last & before_other
    found = {UNTRAINED_STOP: np.unique(ends[stop_untrained & answered] // m.width),
             ANSWER_HOLE: np.unique(holes // m.width),
             UNTRAINED_ANSWER: np.unique(ends[unanswered & ~repeat] // m.width)}
    return found, heads[repeat]
