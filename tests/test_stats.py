"""The typed counters (packsft/stats.py): how they add, how they read and write a manifest's flat dict, and the
figures `summarize` derives from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packsft import PackConfig
from packsft.demo import DATA_DIR as DEMO_DATA
from packsft.errors import OutputError
from packsft.pack.split import SplitCounts
from packsft.run import merge, run_pack
from packsft.stats import (
    ChatTurns,
    Histogram,
    LabelContext,
    PackCounts,
    ReadCounts,
    Rejects,
    RowCounts,
    SourceCounts,
    SplitTotals,
    UnitCounters,
    merge_counters,
    summarize,
)
from packsft.write.layout import DATASET_JSON, MANIFEST_JSON, SHARDS_DIR

# Counters as a unit of several sources packed best-fit with role tokens would store them.
COUNTERS = {
    "conversations_read": 12, "records_filtered": 1, "conversations_dropped_no_trained": 2,
    "conversations_rejected_rendering": 1,
    "tokens_rendered": 5200, "special_strings_in_content": 3, "conversations_dropped_unprompted": 1,
    "trainable_tokens_available": 2000, "trained_unprompted": 40, "length_histogram": [5, 2, 1],
    "conversations_packed": 8, "pieces": 11,
    "per_source": {"web": {"conversations": 3, "trainable": 500, "kept": 400, "tokens": 1500, "pad_share": 500,
                           "truncated": 0, "dropped": 1},
                   "books": {"conversations": 5, "trainable": 1500, "kept": 1500, "tokens": 2500, "pad_share": 0,
                             "truncated": 1, "dropped": 0}},
    "records_rejected": 3, "rejected_by_reason": {"no trained token": 2, "empty messages": 1},
    "conversations_truncated": 1, "conversations_dropped_long": 1, "conversations_split": 2, "pieces_split": 5,
    "exchanges_split": 1, "prompts_shortened": 1,
    "prompted_labels": 1600, "prompted_labels_complete": 1200, "turn_labels_whole": 1500, "answer_labels": 400,
    "answer_labels_complete": 300, "answer_labels_whole": 100,
    "chunks": 4, "nonpad_positions": 3000, "trained_tokens_kept": 1900, "bos_starts": 3,
    "labels_with_bos_and_user": 950,
}
# Counted only by later versions: manifests of earlier ones lack them.
LATER_COUNTERS = ("special_strings_in_content", "turn_labels_whole", "answer_labels", "answer_labels_complete",
                  "answer_labels_whole")


def test_a_field_never_counted_adds_as_nothing():
    once = ReadCounts(conversations_read=2)
    rejected = ReadCounts(conversations_read=3, conversations_rejected_rendering=4)
    assert once + rejected == ReadCounts(conversations_read=5, conversations_rejected_rendering=4)
    assert rejected + once == ReadCounts(conversations_read=5, conversations_rejected_rendering=4)
    assert (once + once).conversations_rejected_rendering is None
    assert (once + once).to_dict() == {"conversations_read": 4, "records_filtered": 0,
                                       "conversations_dropped_no_trained": 0}


def test_units_add_group_by_group_sources_by_name_and_histograms_by_bin():
    a = UnitCounters(rows=RowCounts(chunks=2, nonpad_positions=10, trained_tokens_kept=4),
                     packed=PackCounts(conversations_packed=1, pieces=1,
                                       per_source={"x": SourceCounts(conversations=1, kept=4)}))
    b = UnitCounters(read=ReadCounts(conversations_read=3), rows=RowCounts(chunks=1, bos_starts=1),
                     packed=PackCounts(conversations_packed=2, pieces=3,
                                       per_source={"x": SourceCounts(conversations=1), "y": SourceCounts(kept=2)}),
                     rejects=Rejects(records_rejected=2, rejected_by_reason={"r": 2}))
    total = a + b
    assert total.read == ReadCounts(conversations_read=3)
    assert total.rows == RowCounts(chunks=3, nonpad_positions=10, trained_tokens_kept=4, bos_starts=1)
    assert total.packed == PackCounts(conversations_packed=3, pieces=4, per_source={
        "x": SourceCounts(conversations=2, kept=4), "y": SourceCounts(kept=2)})
    assert total.rejects == Rejects(records_rejected=2, rejected_by_reason={"r": 2})
    assert total.chat is None and total.split is None
    assert Histogram([1, 2, 3]) + Histogram([10, 0, 1]) == (11, 2, 4)
    assert sum([UnitCounters.from_dict({"rejected_by_reason": {"r": 1, "s": 2}})] * 2,
               UnitCounters()).to_dict() == {"records_rejected": 0, "rejected_by_reason": {"r": 2, "s": 4}}


def test_split_counts_convert_by_the_groups_own_field_names():
    counts = SplitCounts(conversations_split=2, pieces_split=5, prompted_labels=7, prompted_labels_complete=6,
                         turn_labels_whole=9, answer_labels=1, truncated_or_dropped=[3])
    assert SplitTotals.of(counts) == SplitTotals(conversations_split=2, pieces_split=5)
    assert LabelContext.of(counts) == LabelContext(prompted_labels=7, prompted_labels_complete=6, turn_labels_whole=9,
                                                   answer_labels=1, answer_labels_complete=0, answer_labels_whole=0)
    total = counts + SplitCounts(pieces_split=1, answer_labels_whole=2, truncated_or_dropped=[8])
    assert (total.pieces_split, total.answer_labels_whole, total.truncated_or_dropped) == (6, 2, [3, 8])


def test_flat_dict_round_trips_and_groups_that_do_not_apply_stay_out():
    counters = UnitCounters.from_dict(COUNTERS)
    assert counters.to_dict() == COUNTERS
    assert counters.chat is None and counters.packed is not None
    assert counters.packed.per_source["web"] == SourceCounts(conversations=3, trainable=500, kept=400, tokens=1500,
                                                             pad_share=500, dropped=1)
    skipped = {"chunks": 0, "nonpad_positions": 0, "trained_tokens_kept": 0, "bos_starts": 0}  # run/unit.py
    assert UnitCounters.from_dict(skipped) == UnitCounters(rows=RowCounts(bos_starts=0))
    assert UnitCounters.from_dict(skipped).to_dict() == skipped
    earlier = {key: value for key, value in COUNTERS.items() if key not in LATER_COUNTERS}
    assert UnitCounters.from_dict(earlier).to_dict() == earlier


def test_a_counter_no_version_writes_is_an_error():
    with pytest.raises(ValueError, match="unknown counters: chunkz"):
        UnitCounters.from_dict({"chunkz": 1, "chunks": 1})
    with pytest.raises(ValueError, match="unknown counters: kepd"):
        UnitCounters.from_dict({"per_source": {"x": {"kepd": 1}}})


@pytest.mark.parametrize("strategy", ["bestfit", "linear"])
def test_real_manifests_round_trip_and_sum_to_dataset_json(tmp_path, demo_tokenizer_dir, strategy):
    out = tmp_path / "out"
    run_pack(Path(DEMO_DATA), out, PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256, strategy=strategy),
             quiet=True, unit_bytes=4_000)
    manifests = [json.loads(path.read_text()) for path in sorted((out / SHARDS_DIR).glob(f"*/{MANIFEST_JSON}"))]
    assert len(manifests) > 1
    for manifest in manifests:
        counters = UnitCounters.from_dict(manifest["counters"])
        assert counters.to_dict() == manifest["counters"]
        assert (counters.split is None) == (strategy == "linear")
        assert counters.read is not None and counters.context is not None and counters.chat is None
    dataset = json.loads((out / DATASET_JSON).read_text())
    total = merge_counters(manifest["counters"] for manifest in manifests)
    assert total.to_dict() == dataset["counters"]
    assert summarize(total, 256) == dataset["stats"]


def test_merge_names_the_manifest_whose_counters_no_version_writes(tmp_path, demo_tokenizer_dir):
    out = tmp_path / "out"
    run_pack(Path(DEMO_DATA), out, PackConfig(tokenizer=str(demo_tokenizer_dir), seq_length=256), quiet=True)
    path = out / SHARDS_DIR / "00000" / MANIFEST_JSON
    original = path.read_text()
    manifest = json.loads(original)
    manifest["counters"]["chunkz"] = manifest["counters"].pop("chunks")
    path.write_text(json.dumps(manifest))
    with pytest.raises(OutputError, match="^shards/00000/manifest.json: unknown counters: chunkz; delete that shard"):
        merge(out)
    path.write_text(original)


def test_chat_template_counters_round_trip(tmp_path, chatml_dir):
    out = tmp_path / "out"
    run_pack(Path(DEMO_DATA), out, PackConfig(tokenizer=str(chatml_dir), seq_length=256, template="chat"), quiet=True)
    counters = json.loads((out / SHARDS_DIR / "00000" / MANIFEST_JSON).read_text())["counters"]
    assert UnitCounters.from_dict(counters).to_dict() == counters
    assert UnitCounters.from_dict(counters).chat == ChatTurns()  # the ChatML template rewrites no turn
    assert "bos_starts" not in counters  # ChatML has no BOS


def test_summarize_hand_made_counters():
    assert summarize(UnitCounters.from_dict(COUNTERS), 999, files_skipped=1) == {
        "chunks": 4,
        "seq_length": 999,
        "fill": 0.75,
        "trained_fraction": 0.475475,
        "bos_start_fraction": 0.75,
        "conversations_read": 12,
        "conversations_packed": 8,
        "conversations_truncated": 1,
        "conversations_split": 2,
        "conversations_dropped": 4,
        "conversations_dropped_long": 1,
        "conversations_dropped_no_trained": 2,
        "conversations_rejected_rendering": 1,
        "conversations_dropped_unprompted": 1,
        "records_filtered": 1,
        "files_skipped": 1,
        "records_rejected": 3,
        "rejected_by_reason": {"empty messages": 1, "no trained token": 2},
        "tokens_rendered": 5200,
        "trainable_tokens_available": 2000,
        "trained_tokens_kept": 1900,
        "trained_retention": 0.95,
        "trained_unprompted": 40,
        "context_completeness": 0.75,
        "turn_prefix_completeness": 0.789474,
        "tool_answer_context_completeness": 0.75,
        "tool_answer_turn_prefix_completeness": 0.25,
        "special_strings_in_content": 3,
        "labels_with_bos_and_user": 0.5,
        "pieces": 11,
        "pieces_split": 5,
        "exchanges_split": 1,
        "prompts_shortened": 1,
        "turns_rewritten_in_history": None,
        "reasoning_tokens_dropped": None,
        "stop_tokens_appended": None,
        "turns_ended_without_stop_token": None,
        "inference_renderings_added": None,
        "inference_context_tokens": None,
        "per_source": {
            "books": {"conversations": 5, "truncated": 1, "dropped": 0, "trainable_tokens_available": 1500,
                      "trained_tokens_kept": 1500, "trained_retention": 1.0, "fill": 1.0},
            "web": {"conversations": 3, "truncated": 0, "dropped": 1, "trainable_tokens_available": 500,
                    "trained_tokens_kept": 400, "trained_retention": 0.8, "fill": 0.75},
        },
    }


def test_summarize_figures_that_need_a_counter_are_none_without_it():
    """A linear pack of an earlier version, with a chat template and no BOS: n/a where nothing was counted."""
    dropped = LATER_COUNTERS + ("bos_starts", "labels_with_bos_and_user", "conversations_rejected_rendering",
                                "conversations_truncated", "conversations_dropped_long", "conversations_split",
                                "pieces_split", "exchanges_split", "prompts_shortened")
    counters = {key: value for key, value in COUNTERS.items() if key not in dropped}
    counters |= {"turns_rewritten_in_history": 2, "reasoning_tokens_dropped": 30, "inference_renderings_added": 0,
                 "inference_context_tokens": 0}
    stats = summarize(UnitCounters.from_dict(counters), 999)
    not_applicable = ("bos_start_fraction", "turn_prefix_completeness", "labels_with_bos_and_user",
                      "tool_answer_context_completeness", "tool_answer_turn_prefix_completeness")
    assert [stats[key] for key in not_applicable] == [None] * len(not_applicable)
    assert (stats["conversations_dropped"], stats["conversations_split"], stats["special_strings_in_content"],
            stats["conversations_rejected_rendering"]) == (3, 0, 0, 0)
    assert (stats["turns_rewritten_in_history"], stats["reasoning_tokens_dropped"]) == (2, 30)
    assert summarize(UnitCounters(), 999)["fill"] is None
