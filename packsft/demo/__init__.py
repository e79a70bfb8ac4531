"""The bundled demo: a small conversation set and a tokenizer, both made by packsft itself.

`packsft demo OUT_DIR` builds the demo tokenizer (a byte-level BPE trained with the `tokenizers`
library on the demo conversations), packs the demo data both ways and inspects a chunk, offline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
DEMO_PARQUET = DATA_DIR / "demo_conversations.parquet"
DEMO_VOCAB = 2000
EOS_TOKEN = "<|endoftext|>"

_TOPICS = {
    "cooking": ["How long should I boil an egg?", "Boil it for nine minutes, then cool it in cold water so the yolk stays bright."],
    "python": ["How do I reverse a list in Python?", "Use `items[::-1]` for a reversed copy, or `items.reverse()` to reverse in place."],
    "travel": ["What should I pack for a week in Lisbon?", "Light layers, comfortable shoes for the hills, a rain jacket and a power adapter."],
    "math": ["What is the derivative of x squared?", "The derivative of x^2 is 2x, by the power rule."],
    "history": ["Who built the first printing press in Europe?", "Johannes Gutenberg, around 1440 in Mainz."],
    "health": ["Is it fine to run every day?", "Many people do; vary the pace, sleep well and rest when something hurts."],
    "music": ["Why does a guitar go out of tune?", "Temperature, humidity and string stretch change the tension of the strings."],
    "physics": ["Why is the sky blue?", "Air scatters short blue wavelengths of sunlight more than red ones (Rayleigh scattering)."],
}
_SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in at most three sentences.",
    "You are a friendly tutor who explains step by step.",
]
_FILLER = (
    "Here is some more detail. It depends on the situation, and a few examples make it clearer. "
    "First, consider the simple case. Then think about what changes when the inputs grow. "
    "Finally, check the result against what you expected, and adjust if it looks wrong. "
)
_FOLLOW_UPS = ["Can you explain that in more detail?", "Why is that?", "Could you give an example?", "Thanks! One more question."]


def demo_conversations(count: int = 120, seed: int = 0) -> list[dict]:
    """Varied, deterministic conversations in the SmolTalk schema (messages, source)."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    records = []
    for index in range(count):
        topic = topics[index % len(topics)]
        question, answer = _TOPICS[topic]
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": rng.choice(_SYSTEMS)})
        if rng.random() < 0.1:  # a continuation: opens with the assistant, as real data sometimes does
            messages.append({"role": "assistant", "content": answer})
        turns = rng.choice([1, 1, 2, 3, 5])
        for turn in range(turns):
            messages.append({"role": "user", "content": question if turn == 0 else rng.choice(_FOLLOW_UPS)})
            length = rng.choice([0, 1, 2, 6, 20])
            messages.append({"role": "assistant", "content": answer + " " + _FILLER * length})
        records.append({"messages": messages, "source": rng.choice(["demo-chat", "demo-tutor"]), "id": f"demo-{index:04d}"})
    return records


def write_demo_parquet(path: Path = DEMO_PARQUET) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(demo_conversations()), path, row_group_size=40)
    return path


def build_demo_tokenizer(folder: Path, vocab_size: int = DEMO_VOCAB) -> Path:
    """Train a byte-level BPE tokenizer on the demo texts and save it as a transformers tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [m["content"] for record in demo_conversations() for m in record["messages"]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "model_max_length": 1 << 30}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
