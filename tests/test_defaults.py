"""One place for each default: `mashup_core/defaults.py`. A literal written again as the default
of a CLI option, a dataclass field or a parameter of the same name drifts from it the day one
of them changes (the old `new-spec --steps 200` did, beside TrainConfig's 100), so this test
reads every module of the core, the pages and app.py and names each such restatement.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mashup_core import defaults

ROOT = Path(__file__).resolve().parent.parent

# The setting a name stands for, wherever it is an option, a field or a parameter.
OWNED = {
    "n": "SCORING_N / STUDY_N", "k": "TOP_K", "scorer": "SCORER", "eval_metric": "EVAL_METRIC",
    "merge_method": "MERGE_METHOD", "method": "MERGE_METHOD", "weight_strategy": "WEIGHT_STRATEGY",
    "weights": "WEIGHT_STRATEGY", "density": "DENSITY",
    "batch_size": "BATCH_SIZE (training) or EVAL_BATCH_SIZE (scoring)",
    "eval_batch_size": "EVAL_BATCH_SIZE", "steps": "TRAIN_STEPS", "train_steps": "TRAIN_STEPS",
    "pair_steps": "TRAIN_STEPS", "eval_every": "EVAL_EVERY", "pair_eval_every": "EVAL_EVERY",
    "checkpoint_every": "CHECKPOINT_EVERY", "lr": "LEARNING_RATE", "learning_rate": "LEARNING_RATE",
    "methods": "STUDY_METHODS", "ks": "STUDY_KS",
}

# Where one of these names means something else, and why (file, name).
ELSEWHERE = {
    ("mashup_core/cli/library.py", "n"): "`mashup targets --n`: examples a preview prints",
    ("mashup_core/merging/elementwise.py", "method"): "TIES' sign election ('total' | 'frequency')",
    ("mashup_core/merging/lora.py", "weights"): "how a method applies the weights, not which",
    ("mashup_core/merging/registry.py", "weights"): "how a method applies the weights, not which",
    ("mashup_core/selection/similarity.py", "k"): "how many nearest neighbours a map lists",
    ("mashup_core/views/library_map.py", "k"): "how many nearest neighbours a map lists",
    ("mashup_core/selection/lm_eval_bridge.py", "batch_size"): "lm-eval's own batch, as the "
    "parity tests run it",
}


def _literal(node: ast.AST | None) -> bool:
    """A number, a string or a tuple/list of them: a value written out, not a name."""
    if isinstance(node, ast.Constant):
        return node.value is not None and not isinstance(node.value, bool) and node.value != ""
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(_literal(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    return False


def _option_name(call: ast.Call) -> str | None:
    """`add_argument("--batch-size", ...)` -> 'batch_size' (its dest, when given)."""
    for kw in call.keywords:
        if kw.arg == "dest" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    long = [f for f in flags if f.startswith("--")] or flags
    return long[0].lstrip("-").replace("-", "_") if long else None


def restated(source: str, where: str) -> list[str]:
    """Each literal default of an owned setting in `source`, as 'where:line: what'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            name = _option_name(node)
            default = next((kw.value for kw in node.keywords if kw.arg == "default"), None)
            if name in OWNED and _literal(default):
                found.append(f"{where}:{node.lineno}: option --{name.replace('_', '-')} "
                             f"defaults to {ast.unparse(default)}; use defaults.{OWNED[name]}")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.target.id in OWNED and _literal(node.value):
                found.append(f"{where}:{node.lineno}: field {node.target.id} = "
                             f"{ast.unparse(node.value)}; use defaults.{OWNED[node.target.id]}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                if arg.arg in OWNED and _literal(default):
                    found.append(f"{where}:{default.lineno}: {node.name}({arg.arg}="
                                 f"{ast.unparse(default)}); use defaults.{OWNED[arg.arg]}")
    return sorted(found, key=lambda hit: int(hit.split(":")[1]))  # in the file's order


def _name(hit: str) -> str:
    """The setting a hit is about: 'option --batch-size ...' / 'field n = ...' / 'f(k=2)'."""
    what = hit.split(": ", 1)[1]
    if what.startswith("option --"):
        return what.split()[1].lstrip("-").replace("-", "_")
    if what.startswith("field "):
        return what.split()[1]
    return what.split("(", 1)[1].split("=", 1)[0]


def test_no_default_is_written_twice():
    files = [*sorted((ROOT / "mashup_core").rglob("*.py")), ROOT / "app.py",
             *sorted((ROOT / "pages").glob("*.py"))]
    found = [hit for path in files if path.name != "defaults.py"
             for hit in restated(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
             if (str(path.relative_to(ROOT)), _name(hit)) not in ELSEWHERE]
    assert not found, "\n".join(found)


def test_the_check_names_the_old_drift():
    """What the code said before the defaults moved: each line is caught, and the spelled-out
    name (defaults.X) is not."""
    old = '''
new.add_argument("--steps", type=int, default=200)
new.add_argument("--batch-size", type=int, default=32)
study.add_argument("--n", type=int, default=64)
@dataclass
class StudySpec:
    density: float = 0.5
    methods: tuple[str, ...] = ("linear", "cat_svd", "ties")
def score_library(library, target, n: int = 256, *, scorer: str = "nll"): ...
new.add_argument("--scorer", default=defaults.SCORER)
def fine(steps: int = defaults.TRAIN_STEPS, name: str = "x", lr: float | None = None): ...
'''
    hits = restated(old, "old.py")
    assert [h.split(": ", 1)[1].split(";")[0] for h in hits] == [
        "option --steps defaults to 200", "option --batch-size defaults to 32",
        "option --n defaults to 64", "field density = 0.5",
        "field methods = ('linear', 'cat_svd', 'ties')", "score_library(n=256)",
        "score_library(scorer='nll')"]


def test_defaults_are_what_the_reference_sets():
    """The reference pipeline's own values (paper-notes: 256 rows, top-2, linear average)."""
    assert (defaults.SCORING_N, defaults.TOP_K, defaults.MERGE_METHOD) == (256, 2, "linear")
    assert defaults.learning_rate("lora") in defaults.LR_SWEEP["lora"]
    assert defaults.learning_rate("full") in defaults.LR_SWEEP["full"]
