"""Run a target through EleutherAI's lm-evaluation-harness, to check our numbers against it.

`write_lm_eval_task` turns a list of `MCExample` into an lm-eval task folder (JSONL + YAML) and
`lm_eval_accuracy` evaluates a loaded model (a PeftModel too) on it, offline. The YAML
reproduces `evaluate_mc`'s strings exactly: the request is (prompt, choice) with no
delimiter (lm-eval's default `target_delimiter` is " "), and the tokenizer adds its BOS the
same way in both (lm-eval keeps the tokenizer's default special tokens). One difference stays:
lm-eval moves trailing spaces of a prompt into the answer, `evaluate_mc` does not, so scores
differ on prompts that end in whitespace.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from mashup_core.data.examples import MCExample
from mashup_core.errors import MashupError

TASK_FILE = "task.yaml"
DATA_FILE = "data.jsonl"
CACHE_DIR = "hf_datasets_cache"


class LmEvalError(MashupError):
    """The examples cannot be exported as an lm-eval task."""


def write_lm_eval_task(examples: Sequence[MCExample], folder: Path, name: str = "mashup_target") -> Path:
    """Write `examples` as lm-eval task `name` in `folder`; returns the YAML's path."""
    if not examples:
        raise LmEvalError("no examples to export as an lm-eval task")
    if not name.isidentifier():
        raise LmEvalError(f"lm-eval task name {name!r} must be letters, digits and underscores")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # `datasets` caches the parsed JSONL; a stale cache must never answer for new examples.
    shutil.rmtree(folder / CACHE_DIR, ignore_errors=True)
    data = folder / DATA_FILE
    with open(data, "w", encoding="utf-8") as fh:
        for ex in examples:  # meta left out: `datasets` wants one schema for every row
            row = {"prompt": ex.prompt, "choices": list(ex.choices), "gold": ex.gold}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Field names (not Jinja templates) so strings pass through untouched. json.dumps quotes
    # paths safely for YAML, which is a superset of JSON.
    yaml = f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
  cache_dir: {json.dumps(str(folder / CACHE_DIR))}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""
    path = folder / TASK_FILE
    path.write_text(yaml)
    return path


def lm_eval_accuracy(
    model, tokenizer, examples: Sequence[MCExample], folder: Path, *, batch_size: int = 16,
    name: str = "mashup_target",
) -> dict[str, float]:
    """lm-eval's acc and acc_norm of `model` (loaded, or a PeftModel) on `examples`.

    The task files go to `folder` (kept, so the run can be repeated with `lm_eval --include_path`).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    write_lm_eval_task(examples, folder, name)
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns that `pretrained` is an object, every time
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        out = simple_evaluate(
            lm, tasks=[name], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            log_samples=False, bootstrap_iters=0, verbosity=None,
        )
    finally:
        model.train(was_training)
        logger.setLevel(level)
    metrics = out["results"][name]
    return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"], "n": len(examples)}
