"""`mashup`: every action of the dashboard, headless.

Each module of this package (one per area) adds its own subcommands through `register(sub)`;
heavy imports (torch, transformers) happen inside the commands so `mashup --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from typing import Any

from mashup_core.errors import MashupError


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, so they can be given after the subcommand's name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--workspace", metavar="DIR",
        help="workspace folder (default: $MASHUP_WORKSPACE, else ./workspace)",
    )
    parent.add_argument("--json", action="store_true", help="print the result as JSON")
    parent.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parent


def emit(args: argparse.Namespace, result: Any, text: str | None = None) -> None:
    """Print `result` as JSON with --json, else `text` (or JSON when no text is given)."""
    if args.json or text is None:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mashup",
        description="Mashup Learning: score a checkpoint library on a target, merge the best, "
        "and finetune from the merge.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parent = common_options()
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):  # __main__ is how jobs start us, not a command
            importlib.import_module(f"{__name__}.{info.name}").register(sub, parent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MashupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mashup runs | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
