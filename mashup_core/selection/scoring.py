"""Relevance scoring: how well does each library checkpoint already do on the target?

Mashup Learning ranks a library's checkpoints on a small sample of the target's train split
and merges the best few. The paper's text ranks by answer loss (`nll`); the reference code by
teacher-forced token accuracy on the answer (`token_acc`: the share of answer tokens whose
argmax over the vocabulary is the gold token, over 256 train rows); lm-eval's multiple-choice
accuracy is `acc` / `acc_norm` (the gold choice has the highest log-likelihood). All come from
one `choice_loglikelihoods` pass per checkpoint, so every scorer in `SCORERS` costs one pass in
all.

The base model is loaded once by the caller. Adapters are attached to one `PeftModel` in groups
sized by memory, every adapter of a group (and the base) scored in the same forwards with PEFT's
mixed-adapter batches, then deleted, so memory holds one group however large the library; at
the end the PEFT layers are unloaded, so the caller gets its bare base model back. Per-example results are
kept, so smaller sample sizes (the n-sweep of the paper's Fig. 2) are computed from prefixes of
one scored sample, without running the model again.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup_core import defaults
from mashup_core.data.examples import MCExample, sample_examples
from mashup_core.selection.scorers import (  # noqa: F401  (the registry, where scoring is)
    AUXILIARY,
    EVAL_METRICS,
    SCORERS,
    ChoiceScores,
    Scorer,
    ScoringError,
    get_scorer,
    mc_result,
)

if TYPE_CHECKING:  # one Checkpoint type: the library's (scoring reads name, path, source_task, kind)
    from mashup_core.models.library import Checkpoint

BASE_ROW = "(base model)"  # parentheses: no library folder is named like this
FULL_SKIPPED = ("full-model checkpoint: scoring it means loading a whole model; pass "
                "include_full=True (slower) to score it")
CACHE_VERSION = 2  # 2: token_acc and exact_match in every table


@dataclass
class ScoreRow:
    name: str
    source_task: str | None
    acc: float
    acc_norm: float
    nll: float
    n: int
    seconds: float  # adapter load + scoring pass
    kind: str = "lora"
    token_acc: float = math.nan  # nan: a table written before token accuracy was scored
    exact_match: float = math.nan

    def value(self, scorer: str) -> float:
        return getattr(self, get_scorer(scorer).name)


def row_from_per_example(name: str, source_task: str | None, kind: str, seconds: float,
                         per: dict[str, Sequence[float]], indices: Sequence[int]) -> ScoreRow:
    """A row on the examples at `indices`, from its per-example values: what scoring those
    examples alone would have given (every scorer's own mean, pooled ones pooled)."""
    means = {s.name: s.mean(per, indices) for s in SCORERS.values() if s.name in per}
    return ScoreRow(name=name, source_task=source_task, n=len(indices), seconds=seconds, kind=kind,
                    **{"acc": math.nan, "acc_norm": math.nan, "nll": math.nan, **means})


@dataclass
class ScoreTable:
    """One row per scored checkpoint, the base model as a reference, and why any were skipped."""

    rows: list[ScoreRow]
    base: ScoreRow | None
    target: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # checkpoint name -> reason
    # Asked for but not in the score store (a table read with `cached_only`): not scored yet.
    unscored: list[str] = field(default_factory=list)
    # Per checkpoint: where its weights came from (path; Hub repo id and revision if any).
    provenance: dict[str, dict[str, str | None]] = field(default_factory=dict)
    # Per row name (base included), per scorer: the value on each example, in sample order.
    per_example: dict[str, dict[str, list[float]]] = field(default_factory=dict, repr=False)
    # Raw per-choice log-likelihoods of this run; in memory only (not in to_dict / the cache).
    choice_scores: dict[str, ChoiceScores] = field(default_factory=dict, repr=False, compare=False)
    from_cache: bool = field(default=False, compare=False)

    @property
    def n(self) -> int:
        return self.base.n if self.base else (self.rows[0].n if self.rows else 0)

    def row(self, name: str) -> ScoreRow:
        for r in ([self.base] if self.base else []) + self.rows:
            if r.name == name:
                return r
        raise ScoringError(f"no checkpoint named {name!r} was scored")

    def rank(
        self, scorer: str, *, exclude_task: str | None = None, exclude_names: Iterable[str] = ()
    ) -> list[str]:
        """Checkpoint names, best first. Ties (common for acc on small n) go to lower nll."""
        s, excluded = get_scorer(scorer), set(exclude_names)
        eligible = [
            r for r in self.rows
            if r.name not in excluded and (exclude_task is None or r.source_task != exclude_task)
        ]
        eligible.sort(key=lambda r: (s.sort_key(r.value(s.name)), r.nll, r.name))
        return [r.name for r in eligible]

    def select_top_k(
        self, scorer: str, k: int, *, exclude_task: str | None = None,
        exclude_names: Iterable[str] = (),
    ) -> list[str]:
        """The k best checkpoints; the reference excludes the target's own (`exclude_task`)."""
        exclude_names = list(exclude_names)
        ranked = self.rank(scorer, exclude_task=exclude_task, exclude_names=exclude_names)
        if k < 1:
            raise ScoringError(f"k must be at least 1 (got {k})")
        if k > len(ranked):
            why = []
            if exclude_task is not None:
                why.append(f"checkpoints trained on {exclude_task!r} are excluded")
            if exclude_names:
                why.append(f"{len(exclude_names)} excluded by name")
            if self.skipped:
                why.append(f"{len(self.skipped)} could not be scored")
            raise ScoringError(
                f"asked for the top {k} checkpoints but only {len(ranked)} of {len(self.rows)} "
                f"scored checkpoints are eligible" + (f" ({'; '.join(why)})" if why else "")
                + f"; use k <= {len(ranked)} or add checkpoints to the library"
            )
        return ranked[:k]

    def subsample(self, indices: Sequence[int]) -> ScoreTable:
        """The table as if only these examples (positions in the scored sample) had been used."""
        if not indices:
            raise ScoringError("cannot score on an empty subsample")
        if not self.per_example:
            raise ScoringError("this table has no per-example results (saved by an old version?)")

        def restrict(row: ScoreRow) -> ScoreRow:
            return row_from_per_example(row.name, row.source_task, row.kind, row.seconds,
                                        self.per_example[row.name], indices)

        return ScoreTable(
            rows=[restrict(r) for r in self.rows],
            base=restrict(self.base) if self.base else None,
            target=self.target, skipped=dict(self.skipped),
            per_example={
                name: {s: [v[i] for i in indices] for s, v in per.items()}
                for name, per in self.per_example.items()
            },
        )

    def head(self, n: int) -> ScoreTable:
        """The first n examples of the sample: what scoring with a smaller n would have given."""
        return self if n >= self.n else self.subsample(range(n))

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "n": self.n,
            "base": asdict(self.base) if self.base else None,
            "rows": [asdict(r) for r in self.rows],
            "skipped": self.skipped, "per_example": self.per_example,
            "provenance": self.provenance,
            "scorers": {s.name: {"higher_is_better": s.higher_is_better, "label": s.label}
                        for s in SCORERS.values()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreTable:
        return cls(
            rows=[ScoreRow(**r) for r in data["rows"]],
            base=ScoreRow(**data["base"]) if data.get("base") else None,
            target=data.get("target"), skipped=dict(data.get("skipped", {})),
            per_example=data.get("per_example", {}), provenance=data.get("provenance", {}),
        )

    def to_frame(self):
        """A pandas DataFrame, best-by-nll first, with the base row last (for the dashboard)."""
        import pandas as pd

        order = {name: i for i, name in enumerate(self.rank("nll"))}
        rows = sorted(self.rows, key=lambda r: order[r.name])
        records = [{**asdict(r), "is_base": False} for r in rows]
        if self.base:
            records.append({**asdict(self.base), "is_base": True})
        columns = [f.name for f in fields(ScoreRow)] + ["is_base"]
        return pd.DataFrame.from_records(records, columns=columns)


# ---------------------------------------------------------------------------------------------
# Sampling and scoring


def _per_example(examples: Sequence[MCExample], scores: ChoiceScores) -> dict[str, list[float]]:
    """Each scorer on each example alone (and each example's counted answer tokens); their
    means (`Scorer.mean`) are `mc_result` on the whole sample."""
    singles = [
        mc_result([ex], ChoiceScores([lp], [nt], [nb], [h], [c]))
        for ex, lp, nt, nb, h, c in zip(examples, scores.logprobs, scores.num_tokens,
                                        scores.num_bytes, scores.hits, scores.counted, strict=True)
    ]
    per = {s: [float(getattr(r, s)) for r in singles] for s in SCORERS}
    per["answer_tokens"] = [float(r.answer_tokens) for r in singles]
    return per


def _measure(model, tokenizer, examples, batch_size, name, source_task, kind, started, table):
    from mashup_core.selection.loglik import choice_loglikelihoods  # torch: on first scoring

    scores = choice_loglikelihoods(model, tokenizer, examples, batch_size)
    return _row(examples, scores, name, source_task, kind, time.perf_counter() - started, table)


def _row(examples, scores: ChoiceScores, name, source_task, kind, seconds, table) -> ScoreRow:
    result = mc_result(examples, scores)
    table.per_example[name] = _per_example(examples, scores)
    table.choice_scores[name] = scores
    return ScoreRow(name, source_task, result.acc, result.acc_norm, result.nll, result.n,
                    seconds, kind, result.token_acc, result.exact_match)


def _attach(peft_model, base_model, path: Path, adapter: str):
    """Add the adapter at `path` as `adapter`; on failure undo it and re-raise.

    This is what `PeftModel.from_pretrained` does (wrap, then `load_adapter`), split in two
    so that a broken first adapter can be unloaded instead of staying injected in the base.
    """
    from peft import PeftConfig, get_peft_model

    config = PeftConfig.from_pretrained(str(path))
    created = peft_model is None
    if created:
        peft_model = get_peft_model(base_model, config, adapter_name=adapter)
    try:
        result = peft_model.load_adapter(str(path), adapter_name=adapter)
        if result.missing_keys:  # PEFT only warns; zero-initialised weights would score silently
            raise ScoringError(
                f"{len(result.missing_keys)} adapter weights missing, e.g. {result.missing_keys[0]}"
            )
    except Exception:
        if created:
            peft_model.unload()
        elif adapter in peft_model.peft_config:  # absent if loading failed before adding it
            peft_model.delete_adapter(adapter)
        raise
    return peft_model


# Adapters held at once while scoring a library: their weights may take this share of the
# base model's parameter bytes (at least MIN_GROUP_BYTES). 200 rank-16 adapters of a 7B model
# are ~17 GB in fp32; at a quarter of a bf16 7B (~3.6 GB) a group holds ~40 rank-8 ones.
GROUP_FRACTION = 0.25
MIN_GROUP_BYTES = 256 * 1024**2
# And at most this many: PEFT's bookkeeping (injecting an adapter, switching, deleting) walks
# every adapter module held, so a group of G costs O(G^2) of it (200 tiny adapters in one
# group spent minutes there); 16 fill a GPU's batches and keep that cost small.
MAX_GROUP = 16


def _adapter_bytes(path: Path) -> int:
    """Upper bound on an adapter's loaded size: its weight files, x2 (PEFT loads half-precision
    adapters in fp32)."""
    path = Path(path)
    files = [path] if path.is_file() else [*path.glob("*.safetensors"), *path.glob("*.bin")]
    return 2 * sum(f.stat().st_size for f in files if f.is_file())


def group_budget(base_model) -> int:
    """Bytes of adapter weights `score_library` holds at once for `base_model`."""
    params = sum(p.numel() * p.element_size() for p in base_model.parameters())
    return max(MIN_GROUP_BYTES, int(GROUP_FRACTION * params))


def _mixable(peft_model, adapter: str) -> bool:
    """Whether PEFT can run this adapter in a mixed-adapter batch (plain LoRA, not DoRA)."""
    config = peft_model.peft_config[adapter]
    return str(getattr(config, "peft_type", "")).endswith("LORA") and not getattr(
        config, "use_dora", False)


# Adapters the bank holds at once: as many as fit in `group_budget` bytes of stacked factors,
# at most this many (each batch holds one or two adapters' rows anyway; more slots only spare
# reloads when halving comes back to an adapter).
MAX_BANK_SLOTS = 64


class LibraryScorer:
    """Scores checkpoints on examples against one base model, keeping what it loaded.

    LoRA adapters go into an adapter bank (`selection.bank`): their factors are copied into
    stacked slots of the base's layers and every row of a batch runs with its own adapter's
    factors, gathered (the base's rows, "__base__", ride along in the first batches). Loading
    is a copy into a free slot, so a second call (halving's next round) that asks for
    adapters still in the bank loads nothing. Adapters the bank does not compute (DoRA,
    lora_bias, saved modules, other PEFT types) are scored through PEFT's mixed-adapter
    batches, in groups sized by memory (`group_budget`, at most `MAX_GROUP`). Full-model
    checkpoints (kind='full') are skipped with a reason unless `include_full`, which loads
    each one. A checkpoint that fails to load is skipped with the error as its reason.
    `close()` hands the bare base model back.
    """

    def __init__(self, base_model, tokenizer, *, batch_size: int = defaults.EVAL_BATCH_SIZE,
                 max_group: int | None = None, use_bank: bool = True, slots: int | None = None):
        self.base_model, self.tokenizer, self.batch_size = base_model, tokenizer, batch_size
        self.max_group = max(1, max_group or MAX_GROUP)
        self.use_bank = use_bank
        self.slots = slots  # the bank's size; None: as many as fit in `group_budget` bytes
        self._base_wanted = True
        self.bank = None  # a BankedModel once the first bankable adapter arrives
        self.loads = 0  # adapters copied into the bank
        self.load_s = 0.0  # seconds spent reading adapters and copying them into the bank
        # Of those, adapters brought back after the bank dropped them for room (what halving's
        # later rounds pay; PEFT's path re-injects every survivor instead), and their seconds.
        self.reloads, self.reload_s = 0, 0.0
        self._ever: set[str] = set()
        self.was_training = base_model.training
        base_model.eval()

    def __enter__(self) -> LibraryScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.bank is not None:
            self.bank.close()
            self.bank = None
        self.base_model.train(self.was_training)

    def score(self, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample], *,
              progress: bool = True, target: str | None = None,
              include_full: bool = False, with_base: bool = True) -> ScoreTable:
        """The base model and every checkpoint on `examples` (already sampled). A row's
        `seconds` is its load time plus its share of its group's forwards. `with_base=False`:
        no base row (a share of a library scored elsewhere, `selection.fanout`)."""
        from tqdm.auto import tqdm

        from mashup_core.selection.bank import BankError, read_bank_adapter

        examples = list(examples)
        if not examples:
            raise ScoringError("no target examples to score on")
        self._base_wanted = with_base
        names = [c.name for c in checkpoints]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ScoringError(f"checkpoint names must be unique; repeated: {', '.join(dupes)}")
        table = ScoreTable(rows=[], base=None, target=target)
        rows: dict[str, ScoreRow] = {}
        from mashup_core.data.limits import context_length
        from mashup_core.selection.loglik import encode_examples

        encoded = encode_examples(self.tokenizer, examples, context_length(self.base_model))
        group: list[tuple[Any, float]] = []  # (checkpoint, load seconds) in the bank
        through_peft: list = []
        for ckpt in tqdm(checkpoints, desc="score checkpoints", disable=not progress):
            started = time.perf_counter()
            if getattr(ckpt, "kind", "lora") == "full":
                if include_full:
                    rows[ckpt.name] = _score_full(ckpt, self.base_model, self.tokenizer, examples,
                                                  self.batch_size, started, table)
                else:
                    table.skipped[ckpt.name] = FULL_SKIPPED
                continue
            if not self.use_bank:
                through_peft.append(ckpt)
                continue
            if self.bank is None or ckpt.name not in self.bank.loaded:
                try:
                    adapter = read_bank_adapter(ckpt.path, ckpt.name)
                    self._room(adapter, keep={c.name for c, _ in group})
                    self.bank.load(adapter)
                    self.loads += 1
                    self.load_s += time.perf_counter() - started
                    if ckpt.name in self._ever:
                        self.reloads += 1
                        self.reload_s += time.perf_counter() - started
                    self._ever.add(ckpt.name)
                except BankError:  # what the bank does not compute, PEFT does
                    through_peft.append(ckpt)
                    continue
                except Exception as exc:  # one broken checkpoint must not stop the rest
                    table.skipped[ckpt.name] = f"cannot load the adapter at {ckpt.path}: {exc}"
                    continue
            group.append((ckpt, time.perf_counter() - started))
            if self.bank.free_slots() == 0 and len(group) == self.bank.slots:
                self._run_bank(group, examples, encoded, table, rows)
        if group:
            self._run_bank(group, examples, encoded, table, rows)
        if through_peft:
            self._run_peft(through_peft, examples, encoded, table, rows)
        if table.base is None and with_base:  # no adapter ran beside it
            table.base = _measure(self.base_model, self.tokenizer, examples, self.batch_size,
                                  BASE_ROW, None, "base", time.perf_counter(), table)
        if not with_base and table.base is not None:
            table.per_example.pop(BASE_ROW, None)
            table.choice_scores.pop(BASE_ROW, None)
            table.base = None
        table.rows = [rows[c.name] for c in checkpoints if c.name in rows]
        table.provenance = {c.name: provenance(c) for c in checkpoints if c.name in rows}
        return table

    def _room(self, adapter, keep: set[str]) -> None:
        """A bank with a free slot for `adapter`: made on first use, sized by memory; when full,
        an adapter loaded earlier and not in the current group leaves."""
        from mashup_core.selection.bank import BankedModel, slots_for

        if self.bank is None:
            slots = self.slots or min(MAX_BANK_SLOTS, slots_for(self.base_model, [adapter],
                                                                group_budget(self.base_model)))
            self.bank = BankedModel(self.base_model, slots)
        if self.bank.free_slots() == 0:
            leaving = next((n for n in self.bank.loaded if n not in keep), None)
            if leaving is None:
                raise ScoringError("internal: the bank is full with the current group")
            self.bank.unload(leaving)

    def _run_bank(self, group, examples, encoded, table, rows) -> None:
        from mashup_core.selection.loglik import library_loglikelihoods

        with_base = table.base is None and self._base_wanted
        run = (["__base__"] if with_base else []) + [c.name for c, _ in group]
        started = time.perf_counter()
        scores = library_loglikelihoods(self.bank, self.tokenizer, examples, run, self.batch_size,
                                        encoded)
        share = (time.perf_counter() - started) / len(run)
        if with_base:
            table.base = _row(examples, scores.pop(0), BASE_ROW, None, "base", share, table)
        for (ckpt, load_s), sc in zip(group, scores, strict=True):
            rows[ckpt.name] = _row(examples, sc, ckpt.name, getattr(ckpt, "source_task", None),
                                   "lora", load_s + share, table)
        group.clear()

    def _run_peft(self, checkpoints, examples, encoded, table, rows) -> None:
        """PEFT's mixed-adapter batches for what the bank does not hold (see `_attach`)."""
        base = self.bank.close() if self.bank is not None else self.base_model
        self.bank = None
        budget, cap = group_budget(base), self.max_group
        peft_model, group, group_bytes = None, [], 0

        def run_group() -> None:
            from mashup_core.selection.loglik import library_loglikelihoods

            nonlocal group_bytes
            adapters = [a for a, _, _ in group]
            with_base = table.base is None and self._base_wanted
            run = (["__base__"] if with_base else []) + adapters
            started = time.perf_counter()
            try:
                peft_model.set_adapter(adapters[0])  # rows name their adapters; PEFT wants one active
                scores = library_loglikelihoods(peft_model, self.tokenizer, examples, run,
                                                self.batch_size, encoded)
                share = (time.perf_counter() - started) / len(run)
                if with_base:
                    table.base = _row(examples, scores.pop(0), BASE_ROW, None, "base", share, table)
                for (_, ckpt, load_s), sc in zip(group, scores, strict=True):
                    rows[ckpt.name] = _row(examples, sc, ckpt.name, getattr(ckpt, "source_task", None),
                                           "lora", load_s + share, table)
            finally:
                # Freed as soon as measured: kept, 200 rank-16 adapters of a 7B model would hold
                # ~17 GB. The PEFT layers stay for the next group.
                with warnings.catch_warnings():  # "Adapter ckpt3 was active which is now deleted"
                    warnings.filterwarnings("ignore", message="Adapter .* was active")
                    for adapter in adapters:
                        peft_model.delete_adapter(adapter)
                group.clear()
                group_bytes = 0

        try:
            for i, ckpt in enumerate(checkpoints):
                started = time.perf_counter()
                size = _adapter_bytes(ckpt.path)
                if group and (len(group) >= cap or group_bytes + size > budget):
                    run_group()
                adapter = f"ckpt{i}"  # library names may hold characters a module name cannot
                try:
                    peft_model = _attach(peft_model, base, ckpt.path, adapter)
                except Exception as exc:  # one broken checkpoint must not stop the rest
                    table.skipped[ckpt.name] = f"cannot load the adapter at {ckpt.path}: {exc}"
                    continue
                self.loads += 1
                self.load_s += time.perf_counter() - started
                if ckpt.name in self._ever:  # injected again: what halving's rounds cost here
                    self.reloads += 1
                    self.reload_s += time.perf_counter() - started
                self._ever.add(ckpt.name)
                peft_model.eval()
                if not _mixable(peft_model, adapter):  # scored alone, as the active adapter
                    peft_model.set_adapter(adapter)
                    try:
                        rows[ckpt.name] = _measure(peft_model, self.tokenizer, examples,
                                                   self.batch_size, ckpt.name,
                                                   getattr(ckpt, "source_task", None), "lora",
                                                   started, table)
                    finally:
                        peft_model.delete_adapter(adapter)
                    continue
                group.append((adapter, ckpt, time.perf_counter() - started))
                group_bytes += size
            if group:
                run_group()
        finally:
            if peft_model is not None:
                peft_model.unload()  # the bare base model back


def provenance(checkpoint) -> dict[str, str | None]:
    """Where a checkpoint's weights came from: its folder, and its Hub repo and revision."""
    return {"path": str(checkpoint.path), "hub_id": getattr(checkpoint, "hub_id", None),
            "revision": getattr(checkpoint, "revision", None)}


def score_library(
    base_model,
    tokenizer,
    checkpoints: Sequence[Checkpoint],
    examples: Sequence[MCExample],
    *,
    batch_size: int = defaults.EVAL_BATCH_SIZE,
    progress: bool = True,
    target: str | None = None,
    include_full: bool = False,
    max_group: int | None = None,
    use_bank: bool = True,
) -> ScoreTable:
    """Score the base model and every checkpoint on `examples` (already sampled), with one
    `LibraryScorer` (see there); `base_model` comes back as it was. `use_bank=False` scores
    every adapter through PEFT's mixed-adapter batches (a reference in tests and benchmarks)."""
    with LibraryScorer(base_model, tokenizer, batch_size=batch_size, max_group=max_group,
                       use_bank=use_bank) as scorer:
        return scorer.score(checkpoints, examples, progress=progress, target=target,
                            include_full=include_full)


def _score_full(ckpt, base_model, tokenizer, examples, batch_size, started, table) -> ScoreRow:
    from mashup_core.models.loading import load_base_model

    device = next(base_model.parameters()).device
    model = load_base_model(ckpt.path, device=device, dtype=next(base_model.parameters()).dtype)
    try:
        return _measure(model, tokenizer, examples, batch_size, ckpt.name,
                        getattr(ckpt, "source_task", None), "full", started, table)
    finally:
        del model


# ---------------------------------------------------------------------------------------------
# How many examples are enough? (the paper's Fig. 2)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties allowed); None when either side is constant."""
    from scipy.stats import kendalltau

    tau = kendalltau(x, y).statistic
    return None if math.isnan(tau) else float(tau)


@dataclass
class SweepResult:
    scorer: str
    ns: list[int]
    rankings: dict[int, list[str]]  # checkpoint names, best first, on the first n examples
    tau: dict[int, float | None]  # Kendall tau-b of the scores at n vs at the largest n
    top1_agreement: dict[int, float]  # share of reshuffles whose top-1 at n is top-1 at max n
    reshuffles: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("rankings", "tau", "top1_agreement"):
            data[key] = {str(n): v for n, v in data[key].items()}
        return data


def sweep_from_table(
    table: ScoreTable, ns: Iterable[int], scorer: str = defaults.SCORER, *, reshuffles: int = 8,
    seed: int = 0, exclude_task: str | None = None, exclude_names: Iterable[str] = (),
) -> SweepResult:
    """Rank on the first n scored examples for each n; compare with the ranking on all of them.

    Top-1 agreement reshuffles the scored sample (seeded) and takes prefixes again: a cheap
    estimate of how often a fresh sample of size n would pick the same first checkpoint.
    """
    s, exclude_names = get_scorer(scorer), list(exclude_names)
    wanted = sorted(set(ns))
    kept = [n for n in wanted if 1 <= n <= table.n]
    notes = [f"n={n} skipped: only {table.n} examples were scored" for n in wanted if n > table.n]
    if not kept:
        raise ScoringError(f"no sweep size fits the {table.n} scored examples (asked {wanted})")
    top = kept[-1]

    def ranked(t: ScoreTable) -> list[str]:
        return t.rank(s.name, exclude_task=exclude_task, exclude_names=exclude_names)

    full = table.head(top)
    full_rank = ranked(full)
    full_values = [full.row(name).value(s.name) for name in full_rank]
    rankings, tau = {}, {}
    for n in kept:
        part = table.head(n)
        rankings[n] = ranked(part)
        tau[n] = kendall_tau([part.row(name).value(s.name) for name in full_rank], full_values)
    agree = dict.fromkeys(kept, 0)
    rng = random.Random(seed)
    for _ in range(reshuffles):
        order = rng.sample(range(top), top)
        for n in kept:
            agree[n] += ranked(table.subsample(order[:n]))[:1] == full_rank[:1]
    return SweepResult(s.name, kept, rankings, tau,
                       {n: agree[n] / reshuffles for n in kept}, reshuffles, notes)


def sweep_n(
    base_model, tokenizer, checkpoints: Sequence[Checkpoint], examples: Sequence[MCExample],
    ns: Iterable[int] = (8, 16, 32, 64, 128, 256), scorer: str = defaults.SCORER, seed: int | None = None,
    *, batch_size: int = defaults.EVAL_BATCH_SIZE, progress: bool = True, exclude_task: str | None = None,
    reshuffles: int = 8,
) -> SweepResult:
    """Score once on the largest n, then rank every smaller n from prefixes of that sample."""
    ns = list(ns)
    sample = sample_examples(examples, max(ns), seed)
    table = score_library(base_model, tokenizer, checkpoints, sample, batch_size=batch_size,
                          progress=progress)
    return sweep_from_table(table, ns, scorer, reshuffles=reshuffles, seed=seed or 0,
                            exclude_task=exclude_task)


# ---------------------------------------------------------------------------------------------
# Explanation


def _describe(row: ScoreRow, base: ScoreRow | None, scorer: Scorer) -> str:
    value = f"{scorer.label} {row.value(scorer.name):.3f}"
    if base is None:
        return f"{value}; it answers {row.acc:.0%} correctly"
    return (f"{value} vs {base.value(scorer.name):.3f} for the base model; "
            f"it answers {row.acc:.0%} correctly vs {base.acc:.0%} for the base model")


def explain_choice(
    table: ScoreTable, scorer: str, k: int, *, exclude_task: str | None = None,
    exclude_names: Iterable[str] = (),
) -> str:
    """Why these k checkpoints, in plain words, with the known traps called out."""
    s, exclude_names = get_scorer(scorer), list(exclude_names)
    chosen = table.select_top_k(s.name, k, exclude_task=exclude_task, exclude_names=exclude_names)
    target = f"{table.target} " if table.target else "target "
    direction = "higher" if s.higher_is_better else "lower"
    lines = [f"Ranked by {s.label} ({direction} is better) on {table.n} {target}examples"
             + (f", leaving out checkpoints trained on {exclude_task}" if exclude_task else "") + "."]
    ordinals = ["first", "second", "third"]
    for i, name in enumerate(chosen):
        row = table.row(name)
        place = ordinals[i] if i < len(ordinals) else f"#{i + 1}"
        task = f" (trained on {row.source_task})" if row.source_task else ""
        lines.append(f"{name}{task} ranks {place}: {_describe(row, table.base, s)}.")

    best = table.row(chosen[0])
    if table.base is not None and not s.better(best.value(s.name), table.base.value(s.name)):
        lines.append(
            f"Warning: even the best checkpoint, {best.name}, is no better than the base model by "
            f"{s.label}. Nothing in the library looks relevant; a merge may not help.")
    for other in ("nll", "acc"):
        if other == s.name:
            continue
        o = SCORERS[other]
        top_other = table.rank(other, exclude_task=exclude_task, exclude_names=exclude_names)[0]
        if top_other != best.name:
            alt = table.row(top_other)
            lines.append(
                f"Warning: by {o.label} {top_other} would rank first instead "
                f"({o.label} {alt.value(other):.3f} vs {best.value(other):.3f} for {best.name}). "
                "Loss and accuracy disagree here, so loss-based selection may pick the wrong "
                "donor: a checkpoint can put its probability on answers of the right shape (low "
                "loss) and still prefer a wrong one (the demo's dsort/dmax lesson).")
    if table.base is not None and s.name != "acc":
        worse = [table.row(name) for name in chosen if table.row(name).acc < table.base.acc]
        if worse:
            who = ", ".join(f"{r.name} ({r.acc:.0%})" for r in worse)
            verb = "answers" if len(worse) == 1 else "answer"
            lines.append(f"Warning: {who} {verb} fewer examples correctly than the base model "
                         f"({table.base.acc:.0%}).")
    if table.skipped:
        lines.append(f"Not scored: {', '.join(sorted(table.skipped))} (see the reasons).")
    return "\n".join(lines)
