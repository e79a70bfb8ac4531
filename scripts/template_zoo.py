"""The template zoo's table: every family of ../shared/templates × every record shape, through packsft's chat path.

    python scripts/template_zoo.py [--family NAME ...] [--shape NAME ...] [--verbose]

Prints family × shape: `ok` (packed, ids equal apply_chat_template's, flags equal the oracle's), `refused` (the
template refuses the record and packsft rejects it), else what fails (LOST, IDS, MASK, PACKED-REFUSED); then per
family the pipeline: every shape packed by `packsft pack` (L=512) and `packsft verify` on the output. With
--verbose, what differs. The same checks run in tests/render/test_template_zoo.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json  # noqa: E402

from packsft import PackConfig, load_tokenizer  # noqa: E402
from packsft.run import run_pack  # noqa: E402
from packsft.verify import verify_output  # noqa: E402
from tests.render.zoo import FAMILIES, RECORDS, TEMPLATES, build_tokenizer, check  # noqa: E402


def pipeline(folder: Path, records: list[dict], out: Path) -> str:
    """Pack the records with the family's tokenizer and verify the output: "packed N/M, verify ok" or the problems."""
    data = out.parent / f"{out.name}-data"
    data.mkdir(parents=True)
    (data / "zoo.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    run_pack(data, out, PackConfig(tokenizer=str(folder), template="chat", seq_length=512, max_reject_fraction=1.0),
             quiet=True)
    counters = json.loads((out / "dataset.json").read_text())["counters"]
    problems = verify_output(out)
    verdict = "ok" if not problems else f"{len(problems)} problem(s): {problems[0]}"
    return f"packed {counters['conversations_packed']}/{counters['conversations_read']}, verify {verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="*", default=None)
    parser.add_argument("--shape", nargs="*", default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if not TEMPLATES.is_dir():
        print(f"no templates at {TEMPLATES}", file=sys.stderr)
        return 2
    shapes = [s for s in RECORDS if not args.shape or s in args.shape]
    failures, pipelines = 0, []
    print("| family | " + " | ".join(shapes) + " |")
    print("|---" * (len(shapes) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            if args.family and family.name not in args.family:
                continue
            folder = build_tokenizer(family, Path(tmp) / family.name)
            tokenizer = load_tokenizer(str(folder), "chat", encoder="auto")
            cells, notes, rendered = [], [], []
            for shape in shapes:
                outcome = check(family, tokenizer, tokenizer.hf, shape, RECORDS[shape])
                if outcome.refused_by_template:
                    cells.append("refused" if outcome.ok else "PACKED-REFUSED")
                else:
                    rendered.append(RECORDS[shape])
                    cells.append("ok" if outcome.ok else
                                 "LOST" if not outcome.packed else "IDS" if not outcome.ids_exact else "MASK")
                if not outcome.ok:
                    failures += 1
                    notes.append(f"  {shape}: {outcome.detail}")
            print(f"| {family.name} | " + " | ".join(cells) + " |")
            if args.verbose:
                print("\n".join(notes))
            pipelines.append(f"| {family.name} | {pipeline(folder, rendered, Path(tmp) / f'{family.name}-out')} |")
    print("\n| family | pipeline (every shape the template renders) |\n|---|---|")
    print("\n".join(pipelines))
    print(f"\n{failures} failing record(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
