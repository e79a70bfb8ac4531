"""The template zoo's table: every family of ../shared/templates × every record shape, through packsft's chat path.

    python scripts/template_zoo.py [--family NAME ...] [--shape NAME ...] [--verbose]

Prints family × shape with packed / ids exact / masks ok (tests/render/zoo.py says what each means) and, with
--verbose, what differs. The same checks run in tests/render/test_template_zoo.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packsft import load_tokenizer  # noqa: E402
from tests.render.zoo import FAMILIES, RECORDS, TEMPLATES, build_tokenizer, check  # noqa: E402


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
    failures = 0
    print("| family | " + " | ".join(shapes) + " |")
    print("|---" * (len(shapes) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            if args.family and family.name not in args.family:
                continue
            folder = build_tokenizer(family, Path(tmp) / family.name)
            tokenizer = load_tokenizer(str(folder), "chat", encoder="auto")
            cells, notes = [], []
            for shape in shapes:
                outcome = check(family, tokenizer, tokenizer.hf, shape, RECORDS[shape])
                if outcome.refused_by_template:
                    cells.append("refused" if outcome.ok else "PACKED-REFUSED")
                else:
                    cells.append("ok" if outcome.ok else
                                 "LOST" if not outcome.packed else "IDS" if not outcome.ids_exact else "MASK")
                if not outcome.ok:
                    failures += 1
                    notes.append(f"  {shape}: {outcome.detail}")
            print(f"| {family.name} | " + " | ".join(cells) + " |")
            if args.verbose:
                print("\n".join(notes))
    print(f"\n{failures} failing record(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
