"""A tiny random transformer agrees, for the real chat templates of other families, that `--turns inference`
trains each assistant turn as the model generates it, through the token it stops with.

The zoo's records (tests/render/zoo.py) are packed with each family's template. The masked loss of a tiny random
Llama (built from a config, CPU) summed over the packed segments equals the sum, over every assistant turn, of
the loss of generating that turn at inference: after `apply_chat_template(messages[:k], add_generation_prompt=True)`
(as much of it as the turn's own rendering holds), the tokens the template renders for the turn when it is the
last one, through the first of the model's stop tokens (EOS appended where the template renders none: GLM). Under `--turns rendered` the sums differ for the
families that render history otherwise (the control).
"""

from __future__ import annotations

import json

import pytest

from packsft import PackConfig, load_tokenizer
from packsft.run import run_pack
from tests.e2e.model_helpers import masked_loss, packed_loss
from tests.render.zoo import BY_NAME, RECORDS, TEMPLATES, build_tokenizer, conversation

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TEMPLATES.is_dir(), reason=f"no templates at {TEMPLATES}")]

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 4096  # every record whole in one row: a split piece has other context than the inference prompt
SHAPES = ("multi_no_system", "tools_dict", "reasoning", "tool_trace_thinking")
# Families whose templates render some earlier turn otherwise than the model generates it, on these shapes.
REWRITING = ("qwen3", "gpt-oss", "glm4.6")


def _generation_loss(model, family, hf, shapes: list[str]) -> float:
    """Σ over the records' assistant turns of the loss of generating each after its generation prompt."""
    total = 0.0
    for shape in shapes:
        conv = conversation(RECORDS[shape])
        messages, tools, kwargs = conv.chat_messages(), conv.tools, conv.template_kwargs()
        try:
            hf.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
        except Exception:  # the template refuses the record: packsft rejects it
            continue
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                context, generated = _turn_at_inference(family, hf, messages, k, tools, kwargs)
                ids = context + generated
                total += masked_loss(model, ids, [i >= len(context) - 1 for i in range(len(ids) - 1)])
    return total


def _turn_at_inference(family, hf, messages, k, tools, kwargs):
    """(context, generated) ids of assistant turn k at inference: the generation prompt
    `apply_chat_template(messages[:k], add_generation_prompt=True)`, then what the model generates there: the turn
    as the template renders it last (the zoo oracle's last generated span of `apply_chat_template(messages[:k + 1])`,
    after the part of the prompt that rendering holds, through its stop token; where the template renders none
    (zoo.Family.appends_stop: GLM), the next role token the conversation renders after the turn, else EOS)."""
    prompt = hf.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)
    last = hf.apply_chat_template(messages[: k + 1], tools=tools, tokenize=False, **kwargs)
    if family.appends_stop:  # no stop rendered after a last turn: the next role token where one follows, else EOS
        whole = hf.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
        following = next((stop for stop in family.stops if whole.startswith(last + stop)), None)
        last += following if k + 1 < len(messages) and following else family.eos
    match = list(family.turn.finditer(last))[-1]
    lo, hi = match.start("gen"), match.end("gen")
    # What the prompt adds after the header (an empty thinking block): the turn holds it, in whole tokens, or not.
    extra = prompt[prompt.rfind(match.group("header")) + len(match.group("header")):] if match.group("header") else ""
    cuts = [end for _, end in hf(extra, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    lo += max((cut for cut in cuts if last.startswith(extra[:cut], lo)), default=0)
    header = match.group("header") or ""
    if last.startswith(prompt[:prompt.rfind(header)] if header else prompt[:lo]):
        text, cut = last[:hi], lo  # the turn's own rendering holds the prompt's history
    else:  # the history is shown otherwise once the turn follows (gpt-oss's earlier analysis): the prompt, then the turn
        text, cut = prompt + last[lo:hi], len(prompt)
    encoded = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    first = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > cut)
    return ids[:first], ids[first:]


def _pack(tmp_path, folder, turns: str, shapes: list[str]):
    data = tmp_path / turns / "data"
    data.mkdir(parents=True)
    (data / "zoo.jsonl").write_text("".join(json.dumps(RECORDS[shape]) + "\n" for shape in shapes))
    out = tmp_path / turns / "out"
    run_pack(data, out, PackConfig(tokenizer=str(folder), template="chat", seq_length=SEQ, turns=turns,
                                   max_reject_fraction=1.0), quiet=True, workers=1)
    return out


@pytest.mark.parametrize("family", ["gpt-oss", "glm4.6", "phi3.5", "command-r7b", "llama3.1", "qwen3",
                                    "r1-distill-qwen", "gemma4", "mistral-small-3.2"])
def test_turns_inference_trains_every_turn_as_the_model_generates_it(family, tmp_path):
    folder = build_tokenizer(BY_NAME[family], tmp_path / "tokenizer")
    tokenizer = load_tokenizer(str(folder), "chat")
    hf = tokenizer.hf
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ + 1,
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()
    shapes = list(SHAPES)
    expected = _generation_loss(model, BY_NAME[family], hf, shapes)
    assert packed_loss(model, _pack(tmp_path, folder, "inference", shapes)) == pytest.approx(expected, rel=1e-9)
    rendered = packed_loss(model, _pack(tmp_path, folder, "rendered", shapes))
    if family in REWRITING:
        assert rendered != pytest.approx(expected, rel=1e-6)
    else:
        assert rendered == pytest.approx(expected, rel=1e-9)
