"""Counters a pack run collects per unit, their sums, and the derived figures `packsft stats` prints.

Every counter is an integer that adds across shards, so `merge` and the dataset manifest only sum.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# Histogram of rendered conversation lengths: bins of this many tokens, the last bin open-ended.
LENGTH_BIN = 256
LENGTH_BINS = 64

UNPROMPTED_WARN_SHARE = 0.01
CHAT_TURN_COUNTERS = ("turns_rewritten_in_history", "reasoning_tokens_dropped", "inference_renderings_added",
                      "inference_context_tokens")


def add_counters(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum nested dicts of integers (counters, per-source counters, histograms) into `total`."""
    for key, value in part.items():
        if isinstance(value, dict):
            add_counters(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            base = total.setdefault(key, [0] * len(value))
            total[key] = [a + b for a, b in zip(base, value)]
        elif value is not None:
            total[key] = total.get(key, 0) + value
    return total


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def summarize(counters: dict[str, Any], seq_length: int, files_skipped: int = 0) -> dict[str, Any]:
    """The figures of `packsft stats --json`, derived from summed counters (and the skipped-file count)."""
    c = Counter({k: v for k, v in counters.items() if isinstance(v, int)})
    chunks = c["chunks"]
    summary: dict[str, Any] = {
        "chunks": chunks,
        "seq_length": seq_length,
        "fill": _ratio(c["nonpad_positions"], chunks * (seq_length + 1)),
        "trained_fraction": _ratio(c["trained_tokens_kept"], chunks * seq_length),
        "bos_start_fraction": _ratio(c["bos_starts"], chunks) if "bos_starts" in c else None,
        "conversations_read": c["conversations_read"],
        "conversations_packed": c["conversations_packed"],
        "conversations_truncated": c["conversations_truncated"],
        "conversations_split": c["conversations_split"],
        "conversations_dropped": c["conversations_dropped_long"]
        + c["conversations_dropped_no_trained"]
        + c["conversations_dropped_unprompted"],
        "conversations_dropped_long": c["conversations_dropped_long"],
        "conversations_dropped_no_trained": c["conversations_dropped_no_trained"],
        # Read, then refused by the chat template (counted in records_rejected too).
        "conversations_rejected_rendering": c["conversations_rejected_rendering"],
        "conversations_dropped_unprompted": c["conversations_dropped_unprompted"],
        "records_filtered": c["records_filtered"],
        "files_skipped": files_skipped,
        "records_rejected": c["records_rejected"],
        "rejected_by_reason": dict(sorted(counters.get("rejected_by_reason", {}).items())),
        "tokens_rendered": c["tokens_rendered"],
        "trainable_tokens_available": c["trainable_tokens_available"],
        "trained_tokens_kept": c["trained_tokens_kept"],
        "trained_retention": _ratio(c["trained_tokens_kept"], c["trainable_tokens_available"]),
        "trained_unprompted": c["trained_unprompted"],
        "context_completeness": _ratio(c["prompted_labels_complete"], c["prompted_labels"]),
        # Trained labels whose own message is in the same piece from its first token (no beheaded turn).
        "turn_prefix_completeness": _ratio(c["turn_labels_whole"], c["trained_tokens_kept"])
        if "turn_labels_whole" in c
        else None,
        # The same two, over the trained labels of turns that answer tool results (None: no such turn).
        "tool_answer_context_completeness": _ratio(c["answer_labels_complete"], c["answer_labels"]),
        "tool_answer_turn_prefix_completeness": _ratio(c["answer_labels_whole"], c["answer_labels"]),
        "special_strings_in_content": c["special_strings_in_content"],
        "labels_with_bos_and_user": _ratio(c["labels_with_bos_and_user"], c["trained_tokens_kept"])
        if "labels_with_bos_and_user" in c
        else None,
        "pieces": c["pieces"],
        "pieces_split": c["pieces_split"],
        "exchanges_split": c["exchanges_split"],
        "prompts_shortened": c["prompts_shortened"],
    }
    # Chat templates only (None for role tokens): what the template's rendering does to trained turns, and the
    # extra renderings --turns inference packs.
    for key in CHAT_TURN_COUNTERS:
        summary[key] = c[key] if key in counters else None
    summary["per_source"] = _per_source(counters.get("per_source", {}))
    return summary


def _per_source(counters: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    per_source = {}
    for source, s in sorted(counters.items()):
        s = Counter(s)
        per_source[source] = {
            "conversations": s["conversations"],
            "truncated": s["truncated"],
            "dropped": s["dropped"],
            "trainable_tokens_available": s["trainable"],
            "trained_tokens_kept": s["kept"],
            "trained_retention": _ratio(s["kept"], s["trainable"]),
            "fill": _ratio(s["tokens"], s["tokens"] + s["pad_share"]),
        }
    return per_source


def warnings(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    notes = []
    kept = summary["trained_tokens_kept"]
    if kept and summary["trained_unprompted"] / kept > UNPROMPTED_WARN_SHARE and config.get("unprompted") == "keep":
        share = summary["trained_unprompted"] / kept
        notes.append(
            f"{share:.1%} of trained tokens are assistant turns no user message prompts "
            "(conversations that open with the assistant); --unprompted mask keeps them as context only"
        )
    if summary.get("special_strings_in_content"):
        notes.append(
            f"{summary['special_strings_in_content']} messages contained special-token strings "
            "(e.g. <|endoftext|>); they were encoded as plain text"
        )
    rewritten, dropped = summary.get("turns_rewritten_in_history"), summary.get("reasoning_tokens_dropped")
    if rewritten or dropped:
        notes.append(
            f"{rewritten or 0:,} trained assistant turns are rendered otherwise when they are not the last turn, and "
            f"{dropped or 0:,} reasoning tokens are left out by the chat template: those turns are trained as the "
            "template shows them in history, not as the model generates them; --turns inference trains each as generated"
        )
    if summary.get("inference_renderings_added"):
        notes.append(
            f"--turns inference added {summary['inference_renderings_added']:,} renderings with "
            f"{summary['inference_context_tokens']:,} tokens of repeated context"
        )
    if summary["conversations_truncated"]:
        notes.append(
            f"{summary['conversations_truncated']} conversations were truncated; --long split keeps every trained token"
        )
    return notes


def format_summary(dataset: dict[str, Any]) -> str:
    """A readable summary of a packed output (what `packsft stats` prints)."""
    s = dataset["stats"]
    cfg = dataset["config"]
    tok = dataset["tokenizer"]

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        f"packsft output: {s['chunks']:,} chunks x {s['seq_length']} tokens ({dataset['dtype']})",
        f"  strategy {cfg['strategy']}, mask {cfg['mask']}, long {cfg['long'] or '-'}, unprompted {cfg['unprompted']}, "
        f"template {cfg['template']}",
        f"  tokenizer {tok['name']} (vocab {tok['vocab_size']:,}, {tok['fingerprint'][:12]})",
        "",
        f"  fill                 {pct(s['fill'])}   (non-pad positions / all positions)",
        f"  trained fraction     {pct(s['trained_fraction'])}   (trained labels / chunks x L)",
        f"  starts at BOS        {pct(s['bos_start_fraction'])}",
        f"  trained retention    {pct(s['trained_retention'])}   "
        f"({s['trained_tokens_kept']:,} of {s['trainable_tokens_available']:,} trainable tokens kept)",
        f"  context completeness {pct(s['context_completeness'])}   (prompted labels whose question, and the tool results they answer, are in the same piece)",
        f"  turn prefix complete {pct(s.get('turn_prefix_completeness'))}   (trained labels whose own turn is in the same piece from its start)",
        *([f"  after tool results   {pct(s['tool_answer_context_completeness'])} context, "
           f"{pct(s.get('tool_answer_turn_prefix_completeness'))} turn prefix   (labels of turns that answer tool results)"]
          if s.get("tool_answer_context_completeness") is not None else []),
        f"  BOS + user before    {pct(s['labels_with_bos_and_user'])}   (trained labels with BOS and a user turn before them in their piece)",
        "",
        f"  conversations read {s['conversations_read']:,}, packed {s['conversations_packed']:,}, "
        f"split {s['conversations_split']:,}, truncated {s['conversations_truncated']:,}, dropped {s['conversations_dropped']:,}",
        f"  records rejected {s['records_rejected']:,}, filtered by source {s['records_filtered']:,}",
    ]
    if s.get("turns_rewritten_in_history") is not None:
        lines.append(
            f"  chat turns: {s['turns_rewritten_in_history']:,} trained turns rewritten in history, "
            f"{s['reasoning_tokens_dropped']:,} reasoning tokens dropped by the template (--turns {cfg.get('turns', 'rendered')}"
            + (f": {s['inference_renderings_added']:,} renderings added, {s['inference_context_tokens']:,} tokens of "
               "repeated context)" if s.get("inference_renderings_added") else ")"))
    if s.get("files_skipped"):
        lines.append(f"  files skipped {s['files_skipped']:,} (unreadable; see skipped_files in dataset.json)")
    reasons = sorted(s.get("rejected_by_reason", {}).items(), key=lambda kv: -kv[1])[:5]
    for reason, count in reasons:
        lines.append(f"    {count:>6,}  {reason}")
    if len(s.get("per_source", {})) > 1 or any(k for k in s.get("per_source", {}) if k != "(none)"):
        lines.append("")
        lines.append(f"  {'source':<24} {'convs':>8} {'fill':>7} {'retention':>10} {'truncated':>10}")
        for source, row in s["per_source"].items():
            lines.append(
                f"  {source[:24]:<24} {row['conversations']:>8,} {pct(row['fill']):>7} "
                f"{pct(row['trained_retention']):>10} {row['truncated']:>10,}"
            )
        lines.append("  (a source's fill counts its conversations' own tokens once; the overall fill also counts "
                     "context repeated by splits)")
    for note in warnings(s, cfg):
        lines.append(f"  warning: {note}")
    return "\n".join(lines)
