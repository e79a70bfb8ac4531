#!/usr/bin/env python
"""Write a long-trace corpus: multi-turn reasoning and tool traces of 8k-60k qwen3 tokens, from real ShareGPT text.

Run from the repository root (needs ../shared):

    python scripts/long_trace_corpus.py /tmp/longcorpus [--records 400] [--files 4] [--seed 0]

Built on scripts/tool_corpus.py (its tools, arguments, results and real-text `Texts`). Each record draws a target
length from 8k-60k tokens and grows an agentic trace to it: user requests, rounds of 1-3 tool calls with their JSON
results, reasoning (`reasoning_content`, several real passages long) and answers; about a third of the traces
hold one assistant turn longer than 32k tokens (long reasoning, then tool calls), the turns a row cannot hold.
Lengths are counted with the qwen3 chat template's rendering; the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tool_corpus import QWEN3, SHAREGPT, TOOLS, Conversations, Texts, chat_template_renderer  # noqa: E402

LOW, HIGH = 8_000, 60_000
HUGE_TURN_SHARE = 0.3  # traces with one assistant turn longer than a 32k row
CHARS_PER_TOKEN = 3.6  # a first guess only; every record is counted with the tokenizer


def reasoning(texts: Texts, chars: int) -> str:
    """Real passages joined into `chars` characters of reasoning."""
    parts, total = [], 0
    while total < chars:
        parts.append(texts.passage(400, 3000))
        total += len(parts[-1]) + 2
    return "\n\n".join(parts)


def trace(conversations: Conversations, rng: random.Random, target: int, count) -> dict:
    """One trace grown until its rendering holds about `target` tokens."""
    texts = conversations.texts
    tools = rng.sample(TOOLS, rng.randint(2, 6))
    messages: list[dict] = [{"role": "system", "content": "You are a careful agent. Think, call tools, then answer."}]
    record = {"messages": messages, "tools": tools}
    if rng.random() < HUGE_TURN_SHARE:
        # One turn longer than a 32k row: long reasoning, then a round of tool calls in the same message.
        messages.append({"role": "user", "content": texts.request()})
        huge = conversations.tool_round(tools)
        huge[0]["reasoning_content"] = reasoning(texts, int(rng.randint(34_000, 45_000) * CHARS_PER_TOKEN))
        huge[0]["content"] = reasoning(texts, 3000)
        messages += huge
    while count(record) < target:
        messages.append({"role": "user", "content": texts.request()})
        for _ in range(rng.randint(1, 8)):
            messages += conversations.tool_round(tools)
        answer = {"role": "assistant", "content": texts.answer()}
        answer["reasoning_content"] = reasoning(texts, rng.randint(2_000, 20_000))
        messages.append(answer)
    return record


def generate(records: int, seed: int = 0):
    """(record, qwen3 tokens) for `records` traces, each 8k-60k tokens."""
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    conversations = Conversations(Texts(SHAREGPT, rng), rng)
    tokenizer = Tokenizer.from_file(str(QWEN3 / "tokenizer.json"))
    render = chat_template_renderer(QWEN3)

    def count(record: dict) -> int:
        return len(tokenizer.encode(render(record), add_special_tokens=False).ids)

    made = 0
    while made < records:
        record = trace(conversations, rng, rng.randint(LOW, HIGH - 8_000), count)
        tokens = count(record)
        if LOW <= tokens <= HIGH:
            made += 1
            yield record, tokens


def write_corpus(out: Path, records: int = 400, files: int = 4, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    handles = [open(out / f"part-{i:05d}.jsonl", "w") for i in range(files)]
    lengths = []
    try:
        for index, (record, tokens) in enumerate(generate(records, seed)):
            handles[index % files].write(json.dumps(record, ensure_ascii=False) + "\n")
            lengths.append(tokens)
    finally:
        for handle in handles:
            handle.close()
    return {"records": len(lengths), "tokens": sum(lengths), "min": min(lengths), "max": max(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_corpus(args.out, args.records, args.files, args.seed)))


if __name__ == "__main__":
    main()
