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
# gpt-oss shows the analysis of earlier tool-calling turns in the generation prompt of a later one but not in the
# rendering where that later turn is last, so --turns inference trains such a turn after other context than the
# model is prompted with (a known gap: its rendering would have to be spliced from two template calls).
LEFT_OUT = {"gpt-oss": ("tool_trace_thinking",)}


def _generation_loss(model, hf, stops: set[int], eos: int, shapes: list[str]) -> float:
    """Σ over the records' assistant turns of the loss of generating each after its generation prompt."""
    total = 0.0
    for shape in shapes:
        conv = conversation(RECORDS[shape])
        messages, tools, kwargs = conv.chat_messages(), conv.tools, conv.template_kwargs()
        try:
            whole = hf.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
        except Exception:  # the template refuses the record: packsft rejects it
            continue
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                context, generated = _turn_at_inference(hf, messages, k, tools, kwargs, whole, stops, eos)
                ids = context + generated
                total += masked_loss(model, ids, [i >= len(context) - 1 for i in range(len(ids) - 1)])
    return total


def _turn_at_inference(hf, messages, k, tools, kwargs, whole: str, stops: set[int], eos: int):
    """(context, generated) ids of assistant turn k at inference, read from the template's texts: the rendering of
    messages[:k + 1] (the turn last), its tokens up to where the generation prompt's text ends (as much of it as
    the rendering holds), and its tokens from there through the first stop token. Where it renders none (GLM), the
    stop is the token the whole conversation renders right after the turn where that is one, else EOS."""
    prompt = hf.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)
    last = hf.apply_chat_template(messages[: k + 1], tools=tools, tokenize=False, **kwargs)
    held = next((i for i, (a, b) in enumerate(zip(prompt, last)) if a != b), min(len(prompt), len(last)))
    encoded = hf(last, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    # The first token not wholly inside the held prompt text (a token the two texts only begin alike is generated).
    ends_at = [end for _, end in encoded["offset_mapping"]]
    first = next((i for i, end in enumerate(ends_at) if end > held), len(ids))
    ends = [i for i in range(first, len(ids)) if ids[i] in stops]
    if ends:
        return ids[:first], ids[first: ends[0] + 1]
    after = hf(whole[len(last):], add_special_tokens=False)["input_ids"][:1] if whole.startswith(last) else []
    return ids[:first], ids[first:] + (after if after and after[0] in stops else [eos])


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
    shapes = [shape for shape in SHAPES if shape not in LEFT_OUT.get(family, ())]
    expected = _generation_loss(model, hf, set(tokenizer.stop_ids), tokenizer.eos_id, shapes)
    assert packed_loss(model, _pack(tmp_path, folder, "inference", shapes)) == pytest.approx(expected, rel=1e-9)
    rendered = packed_loss(model, _pack(tmp_path, folder, "rendered", shapes))
    if family in REWRITING:
        assert rendered != pytest.approx(expected, rel=1e-6)
    else:
        assert rendered == pytest.approx(expected, rel=1e-9)
