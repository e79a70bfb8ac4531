"""A tiny random transformer agrees that with --prompt-start-share a shortened prompt keeps its start: the answer is
predicted after it.

A question longer than the context budget is packed with the demo tokenizer (role tokens, L=128). Its piece must be
BOS, <|user|>, the prompt's first tokens, `[… N tokens omitted] `, its last tokens, then the answer; the masked loss
of a tiny random Llama over the packed output equals the loss of that sequence built here from the tokenizer, and
differs from the loss after the old layout (the end alone), so the answer's labels do condition on the instruction
that opens the prompt.
"""

from __future__ import annotations

import json

import pytest

from packsft import PackConfig
from packsft.render.markers import OMITTED_MARKER
from packsft.render.tokenizer import load_tokenizer
from packsft.run import run_pack
from tests.e2e.model_helpers import masked_loss, packed_loss

pytestmark = pytest.mark.slow  # a tiny transformer run on CPU

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 128
INSTRUCTION = "Answer in French and in one word."
QUESTION = "How do you say hello?"
PROMPT = f"{INSTRUCTION} " + " ".join(f"filler{i}" for i in range(120)) + f" {QUESTION}"
ANSWER = "Bonjour."
START_SHARE = 0.25  # --prompt-start-share


def test_the_answer_to_a_shortened_prompt_is_trained_after_the_prompts_start(tmp_path, demo_tokenizer_dir):
    data = tmp_path / "data"
    data.mkdir()
    record = {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]}
    (data / "long.jsonl").write_text(json.dumps(record) + "\n")
    config = PackConfig(tokenizer=str(demo_tokenizer_dir), template="roles", seq_length=SEQ,
                        prompt_start_share=START_SHARE)
    result = run_pack(data, tmp_path / "out", config, quiet=True)
    assert result.dataset is not None and result.dataset["stats"]["prompts_shortened"] == 1

    tokenizer = load_tokenizer(str(demo_tokenizer_dir))
    prompt, answer = tokenizer.encode_texts([PROMPT, ANSWER])
    roles = tokenizer.role_ids
    budget = int((SEQ + 1) * config.context_share)  # BOS and <|user|> count against it too
    marker_for = lambda kept: tokenizer.encode_texts([OMITTED_MARKER.format(n=len(prompt) - kept)])[0]  # noqa: E731
    kept = budget - 2 - len(marker_for(0))
    while len(marker_for(kept)) > budget - 2 - kept:
        kept -= 1
    start = int(kept * START_SHARE)
    assert tokenizer.encode_texts([INSTRUCTION])[0] == prompt[: len(tokenizer.encode_texts([INSTRUCTION])[0])]
    assert start >= len(tokenizer.encode_texts([INSTRUCTION])[0])  # the whole instruction fits in the start
    head = [tokenizer.bos_id, roles["user"], *prompt[:start], *marker_for(kept), *prompt[len(prompt) - (kept - start):]]
    ids = [*head, roles["assistant"], *answer, tokenizer.eos_id]
    trained = [i >= len(head) - 1 for i in range(len(ids) - 1)]
    only_end = [tokenizer.bos_id, roles["user"], *marker_for(kept), *prompt[len(prompt) - kept:]]
    old = [*only_end, roles["assistant"], *answer, tokenizer.eos_id]

    torch.manual_seed(0)
    llama = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=SEQ + 1)
    model = transformers.LlamaForCausalLM(llama).eval()
    packed = packed_loss(model, tmp_path / "out")
    assert packed == pytest.approx(masked_loss(model, ids, trained), rel=1e-9)
    assert packed != pytest.approx(masked_loss(model, old, [i >= len(only_end) - 1 for i in range(len(old) - 1)]),
                                   rel=1e-6)
