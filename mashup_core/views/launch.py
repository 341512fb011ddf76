"""Scoring the library on a target, and launching a mashup run with its baseline, for the pages.

Both read the workspace's config: its base model and library sources, unless the Launch page
overrides them for one run. The spec is built where `mashup new-spec` builds its own
(`jobs.workspace_spec`), so a run launched from the page and one from the terminal agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mashup_core.errors import MashupError
from mashup_core.views._format import on_first_use
from mashup_core.views.workspace import local_path
from mashup_core.workspace import Workspace

# The Relevance page's; scoring imports torch and transformers, which the pages that score
# nothing do not wait for.
__getattr__ = on_first_use(__name__, {"explain_choice": "mashup_core.selection.scoring"})


def relevance_table(ws: Workspace, target: dict[str, Any], n: int, *, cached_only: bool = False,
                    scan=None):
    """Every usable checkpoint of the library scored on the target's first `n` train examples,
    on the config's base model (cached on disk by `score_library_cached`). `cached_only`: read
    the cache, never score or write (`NotCachedError` when it is not there): what a read-only
    page does. `scan`: the library scan, when the caller has it already."""
    from mashup_core.config import load_target, resolve_config, target_name
    from mashup_core.data.targets import TargetSpec
    from mashup_core.selection.store import score_library_cached
    from mashup_core.views.library import library_scan

    config = resolve_config(ws)
    scan = scan if scan is not None else library_scan(ws)
    if not scan.checkpoints:
        raise MashupError("the library has no usable checkpoint to score: add a source on the "
                          "Library page (the rejected ones say why)")
    spec = TargetSpec.from_dict({"split": "train", **target})
    examples = load_target(spec.with_split("train"), ws)
    return score_library_cached(ws, scan.checkpoints, examples, n=n, base_path=config.base_model,
                                target=target_name(target), progress=False,
                                cached_only=cached_only)


def launch_pair_for(
    ws: Workspace, target: dict[str, Any], *, base: str | None = None,
    sources: Sequence[str] | None = None, **choices: Any,
):
    """Launch a mashup run on `target` and its from-scratch baseline (`jobs.launch_pair`).

    `base` and `sources` override the config for this pair only (None: the config's; an
    empty list of sources is refused, there would be nothing to merge). `choices` are the
    run's own settings, as `workspace_run_spec` takes them (finetune, lr, steps, k, ...).
    """
    from mashup_core.config import resolve_config
    from mashup_core.jobs.runner import launch_pair
    from mashup_core.jobs.workspace_spec import workspace_run_spec

    if sources is not None and not list(sources):
        raise MashupError("pick at least one library source: a mashup run merges checkpoints from it")
    config = resolve_config(ws, base=local_path(base, ws) if base else None,
                            sources=[local_path(s, ws) for s in sources] if sources else None)
    spec = workspace_run_spec(config, target, kind="mashup", where="launch", **choices)
    return launch_pair(ws, spec)
