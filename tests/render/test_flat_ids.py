"""render/flat_ids.py: in the processes packsft owns, gigatoken's batches come back as its flat ids and counts
without awkward being imported, and with the same ids as through awkward. Each case runs in a process of its own:
the stand-in lives in sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from packsft.render.encoder import probe_texts

pytest.importorskip("gigatoken", reason="gigatoken is not installed (a runtime dependency: pip install -e .)")

CASE = """
import json, sys
from packsft.render.encoder import GigatokenEncoder
from packsft.render.flat_ids import stand_in_for_awkward
spec, texts, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if mode == "imported-first":
    import awkward
standing_in = stand_in_for_awkward()
encoder = GigatokenEncoder(open(spec, encoding="utf-8").read())
runs = []
for step in range(2):
    ids, counts = encoder.encode_texts_flat(texts)
    runs.append({"ids": ids.tolist(), "counts": counts.tolist(), "dtype": str(ids.dtype),
                 "stand_in": type(sys.modules["awkward"]).__name__ == "_StandIn",
                 "awkward_loaded": "awkward.contents" in sys.modules})
    if mode == "other-use":
        import awkward
        assert awkward.from_iter([[1, 2], [3]]).tolist() == [[1, 2], [3]]  # not the stand-in's: the real one
print(json.dumps({"standing_in": standing_in, "runs": runs}))
"""


def _run(spec: str, texts: list[str], mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CASE, spec, json.dumps(texts), mode], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def expected(demo_tokenizer_dir):
    texts = ["", *probe_texts()[:40], "Hello <|endoftext|> world"]
    reference = Tokenizer.from_file(str(demo_tokenizer_dir / "tokenizer.json"))
    reference.encode_special_tokens = True  # content reads special-token strings as plain text
    return texts, [encoding.ids for encoding in reference.encode_batch(texts, add_special_tokens=False)]


def _flat(per_text: list[list[int]]) -> tuple[list[int], list[int]]:
    return [t for ids in per_text for t in ids], [len(ids) for ids in per_text]


def test_gigatokens_batches_come_back_without_awkward_with_hfs_ids(demo_tokenizer_dir, expected):
    texts, ids = expected
    result = _run(str(demo_tokenizer_dir / "tokenizer.json"), texts, "owned")
    assert result["standing_in"]
    for run in result["runs"]:
        assert (run["ids"], run["counts"]) == _flat(ids) and run["dtype"] == "int32"
        assert run["stand_in"] and not run["awkward_loaded"]


def test_any_other_use_of_awkward_gets_the_real_one_and_ids_stay(demo_tokenizer_dir, expected):
    texts, ids = expected
    first, then = _run(str(demo_tokenizer_dir / "tokenizer.json"), texts, "other-use")["runs"]
    assert first["stand_in"] and not then["stand_in"] and then["awkward_loaded"]  # replaced by the real one
    assert (first["ids"], first["counts"]) == (then["ids"], then["counts"]) == _flat(ids)


def test_an_awkward_already_imported_is_left_as_it_is(demo_tokenizer_dir, expected):
    texts, ids = expected
    result = _run(str(demo_tokenizer_dir / "tokenizer.json"), texts, "imported-first")
    assert not result["standing_in"]
    assert all(not run["stand_in"] and (run["ids"], run["counts"]) == _flat(ids) for run in result["runs"])
