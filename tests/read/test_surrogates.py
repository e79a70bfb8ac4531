"""Lone surrogates that JSON can spell are counted rejects, never replaced or a traceback."""

from __future__ import annotations

import json

import pytest

from packsft import PackConfig
from packsft.run.pipeline import run_pack
from tests.helpers import GOOD, assert_output_verifies


@pytest.mark.parametrize("template", ["roles", "chat"])
@pytest.mark.parametrize("encoder", ["hf", "auto"])
def test_lone_surrogates_from_json_are_rejected_not_replaced(tmp_path, demo_tokenizer_dir, chatml_dir, template, encoder):
    """JSON can spell a lone surrogate ("\\ud800"); no tokenizer encodes it unchanged: HF refused it with a
    TypeError traceback, the fast encoder replaced it with U+FFFD. Now it is a counted reject either way."""
    data = tmp_path / "data"
    data.mkdir()
    bad = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "ok"}]}'
    text = '{"text": "x\\udc00y"}'
    good = [json.dumps(record) for record in GOOD]
    (data / "chats.jsonl").write_text("\n".join([*good, bad]) + "\n")
    tokenizer = chatml_dir if template == "chat" else demo_tokenizer_dir
    config = PackConfig(tokenizer=str(tokenizer), template=template, encoder=encoder, seq_length=64,
                        max_reject_fraction=0.5)
    result = run_pack(data, tmp_path / "out", config, quiet=True, workers=1)
    assert result.dataset is not None and result.dataset["stats"]["records_rejected"] == 1
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert (reject["row"], reject["reason"]) == (len(GOOD), (
        "message 0 content is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); "
        "no tokenizer can encode it unchanged"))
    assert_output_verifies(tmp_path / "out", deep=True)
    (data / "chats.jsonl").unlink()
    (data / "docs.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + text + "\n")
    docs = run_pack(data, tmp_path / "docs", PackConfig(**{**config.to_dict(), "format": "text", "max_reject_fraction": 1.0}),
                    quiet=True, workers=1)
    assert docs.dataset is not None and docs.dataset["stats"]["rejected_by_reason"] == {
        "text is not valid Unicode (a lone surrogate, from a JSON \\ud800-\\udfff escape); no tokenizer can encode "
        "it unchanged": 1}
