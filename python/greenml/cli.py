"""The ``greenml`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import asdict
from typing import List, Optional, Sequence

from ._errors import GreenmlError


def _table(rows: List[List[str]], headers: List[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def _cmd_sensors(args: argparse.Namespace) -> int:
    from ._sensors import sensors

    found = sensors()
    usable = any(s.available for s in found)
    if args.json:
        print(json.dumps([asdict(s) for s in found], indent=2))
        return 0 if usable else 1
    rows = [
        [
            s.domain,
            s.source,
            "measured" if s.measured else "estimated",
            "yes" if s.available else "no",
        ]
        for s in found
    ]
    print(_table(rows, ["domain", "source", "kind", "available"]))
    reasons = [s for s in found if not s.available]
    if reasons:
        print("\nWhy not:")
        for s in reasons:
            wrapped = textwrap.fill(
                s.reason, width=100, initial_indent="  ", subsequent_indent="    "
            )
            print(f"- {s.domain} ({s.source}):\n{wrapped}")
    if not usable:
        print("\nNothing can be measured or estimated on this machine.", file=sys.stderr)
    return 0 if usable else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greenml", description="Energy profiler for machine learning."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("sensors", help="what can be measured here, and why not the rest")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_sensors)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except GreenmlError as exc:
        print(f"greenml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
