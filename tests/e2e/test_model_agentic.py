"""A tiny random transformer agrees that `--turns inference` trains each assistant turn as the model generates it.

Agentic records (tools, parallel tool calls, tool results, reasoning, follow-ups that make Qwen3 rewrite earlier
turns, `enable_thinking=False`, a weight-0 turn) are packed with the qwen3 template. The masked loss of a tiny
random Llama (built from a config, CPU) summed over the packed rows equals the sum, over every trained assistant
turn, of the loss the model has generating that turn at inference: after
`apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True, **kwargs)`, the tokens the template
renders for the turn when it is the last one, through its `<|im_end|>`. Under `--turns rendered` the two differ
exactly when the template rewrites history (the negative control).
"""

from __future__ import annotations

import json

import pytest

from packsft import PackConfig
from packsft.run import run_pack
from tests.e2e.model_helpers import masked_loss, packed_loss
from tests.helpers import AGENT, SEARCH, WEATHER

pytestmark = pytest.mark.slow  # a tiny transformer run on CPU

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 1024

RECORDS = [
    {"messages": AGENT, "tools": [WEATHER, SEARCH]},
    {"messages": AGENT[:6], "tools": [WEATHER], "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "weight": 0},
                  {"role": "user", "content": "3+3?"},
                  {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6"}]},
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=151_669, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ + 1,
                                      attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config).eval()


def inference_loss(model, hf) -> float:
    """Σ over trained assistant turns of the loss of generating the turn after its generation prompt."""
    end_of_turn, total = hf.convert_tokens_to_ids("<|im_end|>"), 0.0
    for row in RECORDS:
        messages, tools, kwargs = row["messages"], row.get("tools"), row.get("chat_template_kwargs") or {}
        for k, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight") == 0:
                continue
            prompt = list(hf.apply_chat_template(messages[:k], tools=tools, add_generation_prompt=True,
                                                 tokenize=True, **kwargs)["input_ids"])
            last = list(hf.apply_chat_template(messages[: k + 1], tools=tools, tokenize=True, **kwargs)["input_ids"])
            assert last[: len(prompt)] == prompt
            generated = last[len(prompt): last.index(end_of_turn, len(prompt)) + 1]
            ids = prompt + generated
            total += masked_loss(model, ids, [i >= len(prompt) - 1 for i in range(len(ids) - 1)])
    return total


def pack(tmp_path, qwen3_dir, turns: str):
    data = tmp_path / turns / "data"
    data.mkdir(parents=True)
    (data / "a.jsonl").write_text("".join(json.dumps(row) + "\n" for row in RECORDS))
    out = tmp_path / turns / "out"
    run_pack(data, out, PackConfig(tokenizer=str(qwen3_dir), template="chat", seq_length=SEQ, turns=turns),
             quiet=True, workers=1)
    return out


def test_turns_inference_trains_every_turn_as_generated(tmp_path, qwen3_dir, model):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(qwen3_dir)
    expected = inference_loss(model, hf)
    assert packed_loss(model, pack(tmp_path, qwen3_dir, "inference")) == pytest.approx(expected, rel=1e-9)
    # The one rendering trains rewritten turns as the history shows them: another loss (the control).
    assert packed_loss(model, pack(tmp_path, qwen3_dir, "rendered")) != pytest.approx(expected, rel=1e-6)
