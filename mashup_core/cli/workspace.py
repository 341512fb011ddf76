"""`mashup init` and `mashup config`: one workspace is one study of one base model."""

from __future__ import annotations

import argparse

from mashup_core.cli._options import FORMATS_HELP, add_mapping_arguments, add_prompt_format_argument


def register(sub, parent: argparse.ArgumentParser) -> None:
    init = sub.add_parser(
        "init", parents=[parent], help="make a workspace for your base model and checkpoint folders",
        description="Write mashup.toml in the workspace: the base model, the checkpoint sources "
        "and the targets every other verb and the dashboard will use.",
    )
    init.add_argument("--base", required=True, metavar="DIR_OR_HUB_ID", help="the base model")
    init.add_argument("--source", action="append", default=[], metavar="DIR_OR_HUB_ID",
                      help="a folder of checkpoints (PEFT adapters or full safetensors) or a Hub "
                      "id; repeat for several")
    init.add_argument("--target", action="append", default=[], metavar="TARGET",
                      help="a demo task, a benchmark or a data file; repeat for several (the "
                      "field-mapping options apply to every file target given here)")
    init.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    init.add_argument("--trust-remote-code", action="store_true",
                      help="let the base model's own code run (off unless you ask)")
    init.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    init.add_argument("--finetune", default="lora", choices=["lora", "full"])
    add_prompt_format_argument(init, dest="default_prompt_format",
                               help="how every target's rows are shown: " + FORMATS_HELP)
    init.add_argument("--force", action="store_true", help="overwrite an existing mashup.toml")
    add_mapping_arguments(init)
    init.set_defaults(func=_init)

    config = sub.add_parser("config", parents=[parent],
                            help="show the workspace's config; add or remove sources and targets")
    config.add_argument("--add-source", action="append", default=[], metavar="DIR_OR_HUB_ID")
    config.add_argument("--remove-source", action="append", default=[], metavar="DIR_OR_HUB_ID")
    config.add_argument("--add-target", action="append", default=[], metavar="TARGET",
                        help="a demo task, a benchmark or a data file (with the mapping options)")
    config.add_argument("--data", metavar="DIR_OR_FILE",
                        help="with --add-target BENCHMARK: its examples from local files")
    add_prompt_format_argument(config, dest="default_prompt_format",
                               help="set the workspace's prompt format (or, with --for-target, "
                               "those targets'): " + FORMATS_HELP)
    config.add_argument("--for-target", action="append", default=[], metavar="TARGET",
                        help="with --prompt-format: set it for this configured target only; repeat")
    add_mapping_arguments(config)
    config.set_defaults(func=_config)


def _init(args) -> int:
    from mashup_core.config import init_workspace
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    targets = [_target_entry(args, ws, t) for t in args.target]
    config = init_workspace(ws, args.base, args.source, targets, dtype=args.dtype,
                            trust_remote_code=args.trust_remote_code, device=args.device,
                            finetune=args.finetune, prompt_format=args.default_prompt_format or "cloze",
                            force=args.force)
    return _show(args, ws, config, f"wrote {ws.root / 'mashup.toml'}")


def _config(args) -> int:
    from mashup_core.config import (
        ConfigError,
        add_source,
        add_target,
        remove_source,
        require_config,
        set_prompt_format,
    )
    from mashup_core.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    config = require_config(ws)
    if args.for_target and not args.default_prompt_format:
        raise ConfigError("--for-target goes with --prompt-format (the format to give those targets)")
    for source in args.add_source:
        config = add_source(ws, source)
    for source in args.remove_source:
        config = remove_source(ws, source)
    for target in args.add_target:
        config = add_target(ws, _target_entry(args, ws, target))
    if args.default_prompt_format:
        for target in args.for_target or [None]:
            config = set_prompt_format(ws, args.default_prompt_format, target)
    return _show(args, ws, config)


def _target_entry(args, ws, name: str) -> dict:
    from mashup_core.cli._options import target_spec
    from mashup_core.config import load_config

    spec = target_spec(args, ws, "train", name=name).to_dict()
    spec.pop("split")
    config = load_config(ws)
    if spec.get("prompt_format") == (config.defaults.prompt_format if config else "cloze"):
        spec.pop("prompt_format")  # the default's, not an override: it follows the default
    return spec


def _show(args, ws, config, lead: str | None = None) -> int:
    from mashup_core.cli import emit
    from mashup_core.config import target_name

    lines = [lead] if lead else []
    lines += [f"workspace {ws.root}",
              f"  base     {config.base_model} (dtype {config.base.dtype}"
              + (", trust_remote_code" if config.base.trust_remote_code else "") + ")",
              "  sources  " + (", ".join(config.sources) or "none"),
              "  targets  " + (", ".join(f"{target_name(t)} ({t['kind']})" for t in config.targets)
                               or "none"),
              f"  defaults device {config.defaults.device}, finetune {config.defaults.finetune}, "
              f"prompt format {config.defaults.prompt_format}"]
    emit(args, {"workspace": str(ws.root), **config.to_toml_dict(ws.root)}, "\n".join(lines))
    return 0
