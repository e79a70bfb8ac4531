"""Check an output before it feeds a training run: files, invariants, counters, and a deep re-pack.

    files.py       shard list, sizes, sha256s, shapes and dtypes of every file
    invariants.py  what the arrays must satisfy: pads, segments, BOS starts, role-token masks
    chat_turns.py  what a chat-template output trains, message by message, read by the template's headers
    violations.py  what the array checks report, and the blocks of rows they read
    deep.py        re-pack sampled units in memory and compare byte for byte
    checks.py      `packsft verify`: runs the above and reports problems with their file and row
"""

from packsft.verify.checks import Problem, Report, check_output, verify_output

__all__ = ["Problem", "Report", "check_output", "verify_output"]
