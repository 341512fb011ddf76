"""Options several verbs share: the study's model and library, and a target with its mapping.

Every verb that takes them reads the workspace config first (`mashup.toml`); a flag given
on the command line wins. A target named in the config carries its own mapping and data.
"""

from __future__ import annotations

import argparse


def add_model_options(parser: argparse.ArgumentParser, *, library: bool = True) -> None:
    group = parser.add_argument_group("model and library (default: the workspace's mashup.toml)")
    group.add_argument("--base", metavar="DIR_OR_HUB_ID", help="the base model")
    if library:
        group.add_argument("--source", action="append", metavar="DIR_OR_HUB_ID",
                           help="a checkpoint folder or Hub id; repeat for several")
    group.add_argument("--trust-remote-code", action="store_true", default=None,
                       help="let the base model's own code run (off unless you ask)")
    group.add_argument("--chat-template", metavar="FILE",
                       help="a Jinja chat template for a base whose tokenizer has none (the chat "
                       "and reference prompt formats; default: [base] chat_template)")


def add_target_options(parser: argparse.ArgumentParser, *, required: bool = True,
                       flag: str = "--target") -> None:
    parser.add_argument(flag, required=required, metavar="TARGET",
                        help="a target named in mashup.toml, a demo task, a benchmark (arc_easy, "
                        "piqa, ...) or a JSONL/JSON/CSV/TSV file")
    parser.add_argument("--data", metavar="DIR_OR_FILE",
                        help="a benchmark's examples from local files in its Hub schema "
                        "(JSONL, JSON, CSV or Parquet), instead of the Hub")
    add_prompt_format_argument(parser, help="how the target's rows are shown: " + FORMATS_HELP
                               + " (default: the target's in mashup.toml, else [defaults] prompt_format)")
    add_mapping_arguments(parser)


FORMATS_HELP = ("cloze (lm-eval's rows, the default), chat (a chat turn in the base model's "
                "chat template listing lettered choices; the answer is the letter) or reference "
                "(the reference pipeline's own user message per benchmark, in the chat template)")


def add_prompt_format_argument(parser: argparse.ArgumentParser, *, help: str,
                               dest: str = "prompt_format") -> None:
    from mashup_core.data.prompts import PROMPT_FORMATS

    parser.add_argument("--prompt-format", dest=dest, choices=list(PROMPT_FORMATS), help=help)


def add_mapping_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that map a user file's fields (for any command taking a file target)."""
    group = parser.add_argument_group("field mapping (file targets)")
    group.add_argument("--prompt-field", help="prompt field, or a template like '{context} {question}'")
    group.add_argument("--choices-field", help="one list field, or several columns: sol1,sol2")
    group.add_argument("--choices-sep", help="delimiter when one field holds all choices as text")
    group.add_argument("--gold-field", help="gold label field")
    group.add_argument("--gold-format", help="index0, index1, letter or text")
    group.add_argument("--target-delimiter",
                       help="text between the prompt and each choice (default ' ', as lm-eval)")


def mapping_from_args(args: argparse.Namespace):
    """A FieldMapping from the options given (defaults for the rest), or None if none was given."""
    from mashup_core.data.targets import FieldMapping

    given = {
        "prompt": args.prompt_field, "choices": args.choices_field, "gold": args.gold_field,
        "gold_format": args.gold_format, "choices_delimiter": args.choices_sep,
        "target_delimiter": args.target_delimiter,
    }
    given = {k: v for k, v in given.items() if v is not None}
    return FieldMapping(**given) if given else None


def target_spec(args: argparse.Namespace, ws, split: str = "train", name: str | None = None):
    """The TargetSpec the options name (`config.find_target`); mapping and data flags override."""
    from mashup_core.config import find_target

    return find_target(ws, name if name is not None else args.target, split,
                       mapping=mapping_from_args(args), data=getattr(args, "data", None),
                       prompt_format=getattr(args, "prompt_format", None))


def target_rows(args: argparse.Namespace, ws, split: str = "train", name: str | None = None):
    """(TargetSpec, all its rows): a chat format is rendered with the tokenizer of the base the
    verb runs on (--base wins over the workspace's), not always the workspace's."""
    from mashup_core.config import load_target
    from mashup_core.data.prompts import PROMPT_FORMATS

    spec = target_spec(args, ws, split, name)
    tokenizer = None
    if ((getattr(args, "base", None) or getattr(args, "chat_template", None))
            and PROMPT_FORMATS[spec.prompt_format].needs_tokenizer):
        tokenizer = model_config(args, ws).base.load_tokenizer()
    return spec, load_target(spec, ws, tokenizer)


def model_config(args: argparse.Namespace, ws):
    """The workspace config with --base/--source/--trust-remote-code applied."""
    from mashup_core.config import resolve_config

    return resolve_config(ws, base=getattr(args, "base", None), sources=getattr(args, "source", None),
                          trust_remote_code=getattr(args, "trust_remote_code", None),
                          chat_template=getattr(args, "chat_template", None))
