"""What each control token of a row is, named by the part it plays in the template rather than by its slot in
the tokenizer's config, for `inspect` and `report`.

    roles template   <|user|> ... <|assistant|> ... <|endoftext|>
                     USR          ASST               EOS              (the template's own role tokens)
    chat template    <|im_start|>user\\n ... <|im_end|>\\n<|im_start|>assistant\\n ... <|im_end|>
                     user                    end of turn  assistant                 end of turn

A chat template has no role tokens: a turn opens with a header (`<|im_start|>user\\n`, Llama 3's
`<|start_header_id|>user<|end_header_id|>\\n\\n`), found by rendering the template around placeholder
contents. Its end of turn is the first special token after an assistant's content; that is what the
tokenizer's EOS is in ChatML, but not in general (Qwen3 pads with `<|endoftext|>`, Llama 3 ends turns with
`<|eot_id|>`), so neither is called "EOS". Other ids in `tokenizer.stop_ids` are "stop" tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packsft.render.chat import ChatRenderer
from packsft.render.tokenizer import PackTokenizer

END_OF_TURN = "end of turn"
STOP = "stop"
PAD = "PAD"
SHORT_ROLE = {"user": "USR", "assistant": "ASST", "system": "SYS"}
# The header of a turn: its first special token up to the line break(s) after the role name.
HEADER = re.compile(r"[^\n]*?\n+")


@dataclass(frozen=True)
class TemplateMarkers:
    """How to name the control tokens of one tokenizer's rows."""

    names: dict[int, str]  # control token id -> what it is (BOS, end of turn, stop, PAD, USR, im_start, ...)
    headers: tuple[tuple[str, tuple[int, ...]], ...]  # (role, ids of its header), chat templates only

    def header_at(self, ids: list[int], at: int) -> tuple[str, int] | None:
        """(role, header length) of the turn header that starts at position `at`, if one does."""
        for role, header in self.headers:
            if tuple(ids[at : at + len(header)]) == header:
                return role, len(header)
        return None


def template_markers(tokenizer: PackTokenizer) -> TemplateMarkers:
    """The names of `tokenizer`'s control tokens and, for a chat template, its turn headers."""
    if tokenizer.template != "chat":
        names = {tokenizer.eos_id: "EOS", tokenizer.pad_id: PAD}
        if tokenizer.bos_id is not None:
            names[tokenizer.bos_id] = "BOS"
        names.update({token_id: SHORT_ROLE[role] for role, token_id in tokenizer.role_ids.items()})
        return TemplateMarkers(names, ())
    hf = tokenizer.hf
    special = {i for i, t in hf.added_tokens_decoder.items() if t.special} | set(hf.all_special_ids)
    # Chat-template specials are named by their text (`<|im_start|>` -> `im_start`) unless they play a part.
    names = {i: hf.convert_ids_to_tokens(i).strip("<|>") for i in sorted(special)}
    names[tokenizer.pad_id] = PAD
    names.update({i: STOP for i in tokenizer.stop_ids})
    end, headers = _turn_texts(tokenizer, [hf.convert_ids_to_tokens(i) for i in sorted(special)])
    if end is not None:
        names[hf.convert_tokens_to_ids(end)] = END_OF_TURN
    if tokenizer.bos_id is not None:
        names[tokenizer.bos_id] = "BOS"
    encoded = [(role, tuple(hf.encode(text, add_special_tokens=False))) for role, text in headers]
    # Longest first, so that a header that extends another (a tool turn's) is matched whole.
    return TemplateMarkers(names, tuple(sorted(encoded, key=lambda pair: -len(pair[1]))))


def _turn_texts(tokenizer: PackTokenizer, specials: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """(the end-of-turn token's text, [(role, header text)]) read off the template's renderings.

    A template that refuses a conversation shape, or renders a content other than once, gives nothing for
    it: the names then fall back to the tokens' own texts.
    """
    renderer = ChatRenderer(tokenizer)

    def pieces(roles: tuple[str, ...]) -> list[str]:
        try:
            return renderer.literals(roles) or []
        except Exception:  # any template error: that shape names nothing
            return []

    def first_special(text: str) -> tuple[int, str] | None:
        found = [(text.find(s), s) for s in specials if s and s in text]
        return min(found) if found else None

    end = None
    headers: list[tuple[str, str]] = []
    turns = pieces(("user", "assistant", "user"))
    if len(turns) == 4 and (after := first_special(turns[2])) is not None:
        end = after[1]
    system = pieces(("system", "user"))
    bos = tokenizer.hf.convert_ids_to_tokens(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    candidates = [("system", system[0].removeprefix(bos or "") if system else "")]
    if len(turns) == 4:
        candidates += [("user", turns[2]), ("assistant", turns[1])]
    for role, text in candidates:
        if end is not None and end in text:
            text = text[text.index(end) + len(end):]
        opener = first_special(text)
        if opener is None:
            continue
        match = HEADER.match(text, opener[0])
        header = match.group(0) if match else text[opener[0]:]
        if header and all(header != known for _, known in headers):
            headers.append((role, header))
    return end, headers
