"""Shared fixtures. Hermetic: the demo tokenizer is built here; real assets from ../shared are optional."""

from __future__ import annotations

from pathlib import Path

import pytest

from packsft.demo import build_demo_tokenizer
from tests.helpers import CHATML

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"
QWEN3_DIR = SHARED / "tokenizers" / "qwen3"
SHAREGPT_DIR = SHARED / "data" / "sharegpt"


def require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the shared assets are only in the developer checkout and CI)")
    return path


@pytest.fixture(scope="session")
def demo_tokenizer_dir(tmp_path_factory) -> Path:
    return build_demo_tokenizer(tmp_path_factory.mktemp("demo-tokenizer"))


@pytest.fixture(scope="session")
def chatml_dir(tmp_path_factory, demo_tokenizer_dir):
    """The demo tokenizer plus <|im_start|>/<|im_end|> and the CHATML template."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chatml")
    hf = AutoTokenizer.from_pretrained(demo_tokenizer_dir)
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"})
    hf.chat_template = CHATML
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    return require(GPT2_DIR, "the GPT-2 tokenizer")


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    return require(QWEN3_DIR, "the Qwen3 tokenizer")


@pytest.fixture(scope="session")
def sharegpt_dir() -> Path:
    return require(SHAREGPT_DIR, "the ShareGPT shards")


@pytest.fixture(scope="session")
def sharegpt_shard0(tmp_path_factory, sharegpt_dir) -> Path:
    """A folder holding only shard_00000 (symlinked), the shard the seed's reference figures use."""
    folder = tmp_path_factory.mktemp("shard0")
    (folder / "shard_00000.parquet").symlink_to(sharegpt_dir / "shard_00000.parquet")
    return folder


# Modules that damage outputs on purpose (to test that they are refused) or verify their own.
_CORRUPTING_MODULES = {"test_verify", "test_safety", "test_loader", "test_fuzz"}


@pytest.fixture(autouse=True)
def every_output_verifies(request):
    """After each test, `packsft verify` must pass on every complete output it left in its tmp_path."""
    if request.node.module.__name__.split(".")[-1] in _CORRUPTING_MODULES or "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path = request.getfixturevalue("tmp_path")
    yield
    from packsft.verify import verify_output

    for dataset in sorted(tmp_path.rglob("dataset.json")):
        if dataset.parent.name == "shards" or not (dataset.parent / ".packsft").exists():
            continue
        problems = verify_output(dataset.parent)
        assert problems == [], f"{dataset.parent}: " + "; ".join(str(p) for p in problems)
