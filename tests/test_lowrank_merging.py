"""The low-rank LoRA merge methods (core space, KnOTS, TSV-M, Iso-C, Iso-CTS) against their
dense definitions, and what every LoRA merge must not get silently wrong.

Each dense definition is computed here on the updates ΔW_i themselves (float64 d_out × d_in
matrices built from the factors), the way the papers state it, and compared with the merge,
which never forms them: within 1e-5 (relative, the merge's factors are float32). Inputs mix
ranks, alphas and target modules; an adapter absent from a module enters as ΔW = 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import merge_utils
from safetensors.torch import load_file, save_file

from mashup_core.cli import main
from mashup_core.demo.tiny_model import TinyModelSpec, build_tiny_llama
from mashup_core.merging import lora as merging
from mashup_core.merging import lowrank
from mashup_core.merging.lora import (
    MERGE_METHODS,
    AdapterFileError,
    LoraAdapter,
    LoraFactors,
    MergeConfigError,
    load_lora_factors,
    merge_adapters,
    merge_factors,
    module_seed,
)
from mashup_core.training.loop import ALL_LINEAR

TINY = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
LOW_RANK = ["core_task_arithmetic", "core_magnitude_prune", "core_ties", "core_dare_linear",
            "core_dare_ties", "knots_ties", "knots_dare", "tsv_m", "iso_c", "iso_cts"]
NAMES = [f"{merging.PEFT_PREFIX}layers.{i}.proj" for i in range(3)]
SHAPES = {NAMES[0]: (12, 10), NAMES[1]: (9, 14), NAMES[2]: (16, 16)}
WEIGHTS = [0.7, -0.4, 1.2]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread


def _adapter(seed: int, ranks: dict[str, int], scale: float) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    modules = {name: LoraFactors(torch.randn(r, SHAPES[name][1], generator=gen),
                                 torch.randn(SHAPES[name][0], r, generator=gen), scale)
               for name, r in ranks.items()}
    return LoraAdapter(Path(f"a{seed}"), {}, modules, torch.float32, "", None)


@pytest.fixture
def mixed() -> list[LoraAdapter]:
    """Three adapters: ranks 2/3/4 with different alphas; the first lacks module 2, the
    third lacks module 1."""
    return [_adapter(1, {NAMES[0]: 2, NAMES[1]: 3}, 1.0),
            _adapter(2, {NAMES[0]: 3, NAMES[1]: 2, NAMES[2]: 4}, 2.0),
            _adapter(3, {NAMES[0]: 2, NAMES[2]: 3}, 0.5)]


def dense(f: LoraFactors | None, name: str) -> torch.Tensor:
    """ΔW in float64 (zero where the adapter does not target the module)."""
    if f is None:
        return torch.zeros(SHAPES[name], dtype=torch.float64)
    return f.scale * f.B.double() @ f.A.double()


def deltas(adapters, name):
    return [dense(a.modules.get(name), name) for a in adapters]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def merged_delta(merge, name) -> torch.Tensor:
    f = merge.modules[name]
    return f.scale * f.B.double() @ f.A.double()


def full_rank(adapters, name) -> int:
    return sum(a.modules[name].rank for a in adapters if name in a.modules)


def svd_rank(S: torch.Tensor) -> int:
    return int((lowrank.RANK_TOL * S[0] < S).sum()) if S.numel() else 0


def orthonormal(M: torch.Tensor) -> torch.Tensor:
    P, _, Qh = torch.linalg.svd(M, full_matrices=False)
    return P @ Qh


# --------------------------------------------------------------------------- dense definitions


def core_basis(adapters, name):
    """The core space: orthonormal bases of the stacked B's (columns) and A's (rows)."""
    present = [a.modules[name] for a in adapters if name in a.modules]
    U, S_b, _ = torch.linalg.svd(torch.cat([f.B.double() for f in present], 1), full_matrices=False)
    _, S_a, Vh = torch.linalg.svd(torch.cat([f.A.double() for f in present]), full_matrices=False)
    return U[:, :svd_rank(S_b)], Vh[:svd_rank(S_a)]


def dense_core(adapters, name, weights, combine):
    """Panariello et al.: M_i = U_Bᵀ ΔW_i V_Aᵀ from each dense ΔW_i, merged, mapped back."""
    U, V = core_basis(adapters, name)
    return U @ combine([U.T @ d @ V.T for d in deltas(adapters, name)], weights) @ V


def dense_knots(adapters, name, weights, combine):
    """Stoica et al.: the SVD of [ΔW_1 … ΔW_T], the merge on the aligned V_i."""
    in_dim = SHAPES[name][1]
    tasks = deltas(adapters, name)
    U, S, Vh = torch.linalg.svd(torch.cat(tasks, 1), full_matrices=False)
    k = svd_rank(S)
    # A task's block of Vh is exactly 0 where its ΔW is; float64 leaves ~1e-17 there, which
    # TIES would count as agreeing entries: exact arithmetic's zeros instead.
    V = [Vh[:k, i * in_dim:(i + 1) * in_dim] * bool(t.abs().sum()) for i, t in enumerate(tasks)]
    return U[:, :k] @ torch.diag(S[:k]) @ combine(V, weights)


def dense_tsv(adapters, name, weights):
    """Gargiulo et al.: each task's top ⌊min(out, in)/T⌋ singular triplets (of which r_i are
    non-zero), the concatenated bases made orthonormal."""
    tasks = [w * d for w, d in zip(weights, deltas(adapters, name), strict=True) if d.abs().sum()]
    share = min(SHAPES[name]) // len(tasks)
    parts = []
    for t in tasks:
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        k = min(share, svd_rank(s))
        parts.append((u[:, :k], s[:k], vh[:k]))
    U = orthonormal(torch.cat([p[0] for p in parts], 1))
    V = orthonormal(torch.cat([p[2].T for p in parts], 1))
    return U @ torch.diag(torch.cat([p[1] for p in parts])) @ V.T


def dense_iso_c(adapters, name, weights):
    """Marczak et al.: Σ w_i ΔW_i with its (non-zero) singular values replaced by their mean."""
    U, S, Vh = torch.linalg.svd(sum(w * d for w, d in zip(weights, deltas(adapters, name), strict=True)),
                                full_matrices=False)
    k = svd_rank(S)
    return S[:k].mean() * U[:, :k] @ Vh[:k]


def dense_iso_cts(adapters, name, weights, fraction=0.8):
    """Iso-CTS as FusionBench computes it, on the sum's D non-zero directions."""
    tasks = [w * d for w, d in zip(weights, deltas(adapters, name), strict=True) if d.abs().sum()]
    U, S, Vh = torch.linalg.svd(sum(tasks), full_matrices=False)
    D = svd_rank(S)
    common = int(D * fraction)
    per_task = min(round((D - common) / len(tasks)), D // len(tasks))
    common = D - per_task * len(tasks)
    Uc = U[:, :common]
    us, ss, vs = [Uc], [S[:common]], [Vh[:common]]
    for t in tasks:
        u, s, vh = torch.linalg.svd(t - Uc @ Uc.T @ t, full_matrices=False)
        k = min(per_task, svd_rank(s))
        us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k])
    s_all = torch.cat(ss)
    return s_all.mean() * orthonormal(torch.cat(us, 1)) @ orthonormal(torch.cat(vs, 0).T).T


def peft_ties(tasks, weights, density=0.5):
    return merge_utils.ties(tasks, torch.tensor(weights, dtype=torch.float64), density)


def peft_magnitude(tasks, weights, density=0.5):
    return merge_utils.magnitude_prune(tasks, torch.tensor(weights, dtype=torch.float64), density)


def task_arithmetic(tasks, weights):
    return sum(w * t for w, t in zip(weights, tasks, strict=True))


def dare_same_mask(seed: int, name: str, density: float, ties: bool):
    """DARE with the masks the merge draws: its generator for this module, task by task."""
    def combine(tasks, weights):
        gen = torch.Generator().manual_seed(module_seed(seed, name))
        dropped = [t * torch.bernoulli(torch.full(t.shape, density, dtype=torch.float32),
                                       generator=gen).double() / density for t in tasks]
        if not ties:
            return task_arithmetic(dropped, weights)
        return peft_ties(dropped, weights, 1.0)
    return combine


# --------------------------------------------------------------------------- equal to the dense definition


@pytest.mark.parametrize("method", LOW_RANK)
def test_each_low_rank_method_equals_its_dense_definition(mixed, method):
    options = {"density": 0.5} if MERGE_METHODS[method].uses_density else {}
    rank = max(full_rank(mixed, n) for n in NAMES)  # no truncation: the whole result
    if MERGE_METHODS[method].truncates:
        options["rank"] = rank
    merge = merge_factors(mixed, WEIGHTS, method, seed=7, **options)
    for name in NAMES:
        if method == "core_task_arithmetic":
            expected = task_arithmetic(deltas(mixed, name), WEIGHTS)  # the basis drops out
        elif method.startswith(("core_", "knots_")):
            space = dense_core if method.startswith("core_") else dense_knots
            combine = {"core_magnitude_prune": peft_magnitude, "core_ties": peft_ties,
                       "knots_ties": peft_ties,
                       "core_dare_linear": dare_same_mask(7, name, 0.5, ties=False),
                       "core_dare_ties": dare_same_mask(7, name, 0.5, ties=True),
                       "knots_dare": dare_same_mask(7, name, 0.5, ties=True)}[method]
            expected = space(mixed, name, WEIGHTS, combine)
        else:
            expected = {"tsv_m": dense_tsv, "iso_c": dense_iso_c, "iso_cts": dense_iso_cts}[method](
                mixed, name, WEIGHTS)
        assert rel(merged_delta(merge, name), expected) < 1e-5, name


def test_core_task_arithmetic_is_the_exact_sum_cat_svd_computes(mixed):
    for rank in (2, 4, 9):
        core = merge_factors(mixed, WEIGHTS, "core_task_arithmetic", rank=rank)
        exact = merge_factors(mixed, WEIGHTS, "cat_svd", rank=rank)
        for name in NAMES:
            assert rel(merged_delta(core, name), merged_delta(exact, name)) < 1e-5


@pytest.mark.parametrize("method", [m for m in MERGE_METHODS if m != "linear"])
def test_merging_one_adapter_at_weight_one_returns_it(mixed, method):
    """At the settings where a method keeps everything (density 1): the adapter itself. Iso
    flattens the spectrum by definition: an adapter whose spectrum is flat comes back."""
    spec = MERGE_METHODS[method]
    one = mixed[1]
    if method.startswith("iso"):
        flat = {}
        for name, f in one.modules.items():
            U, _, Vh = lowrank.product_svd(f.B, f.A)
            flat[name] = LoraFactors(Vh.float() * 1.5, U.float(), f.scale)  # ΔW = 1.5·scale·U·Vh
        one = LoraAdapter(one.path, {}, flat, torch.float32, "", None)
    merge = merge_factors([one], [1.0], method, **({"density": 1.0} if spec.uses_density else {}))
    for name, f in one.modules.items():
        assert rel(merged_delta(merge, name), dense(f, name)) < 1e-5, name


@pytest.mark.parametrize("method", [m for m in MERGE_METHODS if m != "linear"])
def test_input_order_does_not_change_the_merge(mixed, method):
    spec = MERGE_METHODS[method]
    options = {"density": 1.0 if spec.random else 0.5} if spec.uses_density else {}
    if spec.truncates:
        options["rank"] = 3  # truncated too: the best rank-3 approximation is order-free
    forward = merge_factors(mixed, WEIGHTS, method, **options)
    order = [2, 0, 1]
    backward = merge_factors([mixed[i] for i in order], [WEIGHTS[i] for i in order], method, **options)
    for name in NAMES:
        assert rel(merged_delta(backward, name), merged_delta(forward, name)) < 1e-5, name


def test_random_low_rank_merges_are_functions_of_the_seed_and_of_the_module_alone(mixed):
    a = merge_factors(mixed, WEIGHTS, "core_dare_ties", density=0.5, seed=1)
    b = merge_factors(mixed, WEIGHTS, "core_dare_ties", density=0.5, seed=1)
    c = merge_factors(mixed, WEIGHTS, "core_dare_ties", density=0.5, seed=2)
    alone = merge_factors([LoraAdapter(x.path, {}, {NAMES[0]: x.modules[NAMES[0]]}, torch.float32, "", None)
                           for x in mixed], WEIGHTS, "core_dare_ties", density=0.5, seed=1)
    assert all(torch.equal(a.modules[n].A, b.modules[n].A) for n in NAMES)
    assert any(not torch.equal(a.modules[n].A, c.modules[n].A) for n in NAMES)
    assert torch.equal(alone.modules[NAMES[0]].A, a.modules[NAMES[0]].A)


def test_tsv_and_iso_produce_orthonormal_directions_and_the_spectra_they_promise(mixed):
    for method in ("tsv_m", "iso_c", "iso_cts"):
        merge = merge_factors(mixed, WEIGHTS, method)
        for name in NAMES:
            U, S, _ = torch.linalg.svd(merged_delta(merge, name), full_matrices=False)
            k = svd_rank(S)
            if method.startswith("iso"):
                assert float(S[:k].max() - S[:k].min()) < 1e-5 * float(S[0])  # flat
            assert k <= full_rank(mixed, name)


# --------------------------------------------------------------------------- files, PEFT, defaults


def peft_adapter(root: Path, name: str, *, r: int, alpha: int, seed: int, targets=("q_proj", "v_proj"),
                 **extra) -> Path:
    model = build_tiny_llama(64, TINY, seed=123)
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets if isinstance(targets, str)
                        else list(targets), init_lora_weights=False, **extra)
    get_peft_model(model, config).save_pretrained(root / name)
    return root / name


@pytest.fixture
def adapter_dirs(tmp_path) -> list[Path]:
    """q,v rank 4, all-linear rank 8 (alpha 24), all-linear rsLoRA rank 6 with a rank pattern."""
    return [peft_adapter(tmp_path, "qv", r=4, alpha=8, seed=1),
            peft_adapter(tmp_path, "all", r=8, alpha=24, seed=2, targets=ALL_LINEAR),
            peft_adapter(tmp_path, "rs", r=6, alpha=12, seed=3, targets=ALL_LINEAR, use_rslora=True,
                         rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 5})]


@pytest.mark.parametrize("method", [m for m in MERGE_METHODS if m != "linear"])
def test_every_method_writes_an_adapter_peft_loads_and_trains_with_the_merged_update(adapter_dirs, tmp_path,
                                                                                       method):
    spec = MERGE_METHODS[method]
    merged = merge_adapters(adapter_dirs, None, method, tmp_path / "out",
                            **({"density": 0.6} if spec.uses_density else {}))
    assert merged.weights == spec.default_weights(3)
    saved = load_lora_factors([tmp_path / "out"])[0]
    expected = merge_factors(load_lora_factors(adapter_dirs), None, method,
                             **({"density": 0.6} if spec.uses_density else {}))
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    model = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out",
                                      is_trainable=True)
    by_hand = build_tiny_llama(64, TINY, seed=123)
    with torch.no_grad():
        for name, f in expected.modules.items():
            assert rel(saved.modules[name].delta(), f.delta()) < 1e-6 or f.delta().abs().max() == 0
            by_hand.get_submodule(name.removeprefix(merging.PEFT_PREFIX)).weight += f.delta()
        torch.testing.assert_close(model(ids).logits, by_hand(ids).logits, rtol=0, atol=1e-5)
    trainable = [p for n, p in model.named_parameters() if "lora_" in n]
    assert trainable and all(p.requires_grad for p in trainable)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert (tmp_path / "out" / "mergekit_config.yml").exists() and (tmp_path / "out" / "README.md").exists()


def test_weights_default_to_one_each_for_task_vectors_and_one_over_k_for_averages(adapter_dirs):
    adapters = load_lora_factors(adapter_dirs[1:])
    assert merge_factors(adapters, None, "ties", density=0.5).weights == [1.0, 1.0]
    assert merge_factors(adapters, None, "cat").weights == [0.5, 0.5]
    ta = merge_factors(adapters, None, "task_arithmetic", rank=16)
    cat = merge_factors(adapters, None, "cat")
    for name, f in cat.modules.items():  # task arithmetic without weights is the sum, not the average
        assert rel(ta.modules[name].delta(), 2 * f.delta()) < 1e-5


def test_cli_merge_without_weights_takes_each_methods_default(tiny_world, tmp_path, capsys):
    ws = ["--workspace", str(tiny_world.root), "--json"]
    assert main(["merge", "sort", "min", "--method", "ties", "--density", "0.5", *ws,
                 "--out", str(tmp_path / "t")]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == [1.0, 1.0]
    assert main(["merge", "sort", "min", "--method", "ties", "--density", "0.5", "--strategy", "equal",
                 *ws, "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == [0.5, 0.5]
    assert main(["merge", "sort", "min", "--method", "cat", "--seed", "1", *ws,
                 "--out", str(tmp_path / "c")]) == 2
    assert "method 'cat' draws no random numbers: --seed would have no effect" in capsys.readouterr().err
    assert main(["merge", "sort", "min", "--method", "core_dare_ties", "--density", "0.5",
                 "--param", "rescale=true", "--param", "lambda=0.5", "--seed", "4", *ws,
                 "--out", str(tmp_path / "d")]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == {
        "density": 0.5, "rescale": True, "normalize": "count", "majority_sign_method": "total",
        "lambda": 0.5, "seed": 4}


# --------------------------------------------------------------------------- no silent wrong merge


def _save_with(src: Path, dst: Path, edit_config=None, edit_tensors=None) -> Path:
    shutil.copytree(src, dst)
    if edit_config:
        config = json.loads((dst / merging.CONFIG_FILE).read_text())
        (dst / merging.CONFIG_FILE).write_text(json.dumps(edit_config(config)))
    if edit_tensors:
        tensors = load_file(dst / merging.WEIGHTS_FILE)
        edit_tensors(tensors)
        save_file(tensors, dst / merging.WEIGHTS_FILE)
    return dst


@pytest.mark.parametrize(("config", "tensor", "message"), [
    ({"use_dora": True}, None, r"DoRA adapters \(use_dora: true\) rescale each weight.*merge_and_unload"),
    ({"lora_bias": True}, None, r"lora_bias: true adds a bias to lora_B that no merge method combines"),
    ({"trainable_token_indices": [3]}, None, r"trainable tokens"),
    (None, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias",
     r"is lora_B's bias \(lora_bias: true\), which no merge method combines; retrain without lora_bias"),
    (None, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
     r"DoRA's magnitude vector"),
    (None, "base_model.model.model.embed_tokens.lora_embedding_A", r"LoRA on an embedding layer"),
])
def test_what_a_merge_cannot_carry_is_refused_before_work_with_what_would_work(tmp_path, config, tensor,
                                                                               message):
    src = peft_adapter(tmp_path, "src", r=4, alpha=8, seed=1)
    bad = _save_with(src, tmp_path / "bad", edit_config=(lambda c: {**c, **config}) if config else None,
                     edit_tensors=(lambda t: t.__setitem__(tensor, torch.zeros(4))) if tensor else None)
    with pytest.raises(AdapterFileError, match=message):
        merge_adapters([src, bad], [0.5, 0.5], "cat", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def saving_adapters(tmp_path) -> list[Path]:
    """Two adapters that also save the embedding and the head whole (a reference pipeline
    adapter's layout)."""
    return [peft_adapter(tmp_path, f"s{i}", r=4, alpha=8, seed=i, modules_to_save=["lm_head", "embed_tokens"])
            for i in (1, 2)]


def test_saved_whole_modules_are_averaged_exactly_when_the_weights_sum_to_one(saving_adapters, tmp_path):
    merge_adapters(saving_adapters, [0.3, 0.7], "cat", tmp_path / "out")
    heads = [load_file(d / merging.WEIGHTS_FILE)["base_model.model.lm_head.weight"] for d in saving_adapters]
    model = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")
    loaded = model.base_model.model.lm_head.modules_to_save["default"].weight
    torch.testing.assert_close(loaded, 0.3 * heads[0] + 0.7 * heads[1], rtol=0, atol=1e-6)
    with pytest.raises(MergeConfigError, match=r"only when the weights sum to 1, and \[1.0, 1.0\] sum to 2"):
        merge_adapters(saving_adapters, [1.0, 1.0], "cat", tmp_path / "x")
    with pytest.raises(MergeConfigError, match=r"'ties' would prune or rotate their LoRA updates but could "
                                               r"only average those modules"):
        merge_adapters(saving_adapters, [0.5, 0.5], "ties", tmp_path / "y", density=0.5)
    plain = peft_adapter(tmp_path, "plain", r=4, alpha=8, seed=3)
    with pytest.raises(MergeConfigError, match=r"save different whole modules .*its value is the base's"):
        merge_adapters([saving_adapters[0], plain], [0.5, 0.5], "cat", tmp_path / "z")
    resized = _save_with(saving_adapters[1], tmp_path / "resized", edit_tensors=lambda t: t.__setitem__(
        "base_model.model.lm_head.weight", torch.zeros(70, 32)))
    with pytest.raises(MergeConfigError, match=r"\[64, 32\] in s1 but \[70, 32\] in resized"):
        merge_adapters([saving_adapters[0], resized], [0.5, 0.5], "cat", tmp_path / "w")
    merged = merge_factors(load_lora_factors(saving_adapters), [0.5, 0.5], "cat")
    slot = merging.add_merge_slot(build_tiny_llama(64, TINY, seed=123), merge_factors(
        load_lora_factors([plain]), [1.0], "cat"), {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(MergeConfigError, match="would silently drop them"):
        merging.load_into_peft(slot, merged)


def test_rslora_and_rank_patterns_reload_as_merged(adapter_dirs, tmp_path):
    """An rsLoRA input (scale α/√r) with a rank/alpha pattern: read at its real scale, and the
    output's config (plain LoRA with per-module ranks and alphas) gives PEFT that scale back."""
    rs = load_lora_factors([adapter_dirs[2]])[0]
    down = next(n for n in rs.modules if n.endswith("down_proj"))
    assert rs.modules[down].rank == 2 and rs.modules[down].scale == pytest.approx(5 / 2**0.5)
    merge_adapters([adapter_dirs[2]], [1.0], "cat", tmp_path / "out")
    config = json.loads((tmp_path / "out" / merging.CONFIG_FILE).read_text())
    assert config["use_rslora"] is False and config["rank_pattern"] and config["alpha_pattern"]
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    original = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), adapter_dirs[2])
    again = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, original(ids).logits, rtol=0, atol=1e-5)


def test_a_density_never_silently_keeps_nothing(tmp_path):
    """Deterministic pruning keeps at least one entry; random drops that would expect to keep
    less than one entry of a module are refused before any module is merged."""
    tiny = LoraAdapter(Path("t"), {}, {NAMES[0]: LoraFactors(torch.tensor([[1.0, 2.0, 3.0]]),
                                                             torch.tensor([[1.0], [5.0]]), 1.0)},
                       torch.float32, "", None)
    kept = merge_factors([tiny], [1.0], "magnitude_prune", density=0.01).modules[NAMES[0]]
    assert int((kept.delta().abs() > 1e-6).sum()) == 1
    with pytest.raises(MergeConfigError, match=r"density 0.01 keeps on average 0.06 of the 6 entries of "
                                               r"module .*: random drops would erase it; use density ≥ 0.167"):
        merge_factors([tiny], [1.0], "dare_linear", density=0.01)


def test_a_leave_one_out_study_takes_the_low_rank_methods(world_copy):
    from mashup_core.study.grid import run_study
    from mashup_core.study.report import study_table
    from mashup_core.study.spec import StudySpec

    methods = ("core_ties", "knots_dare", "tsv_m", "iso_c")
    spec = StudySpec(tasks=("min",), methods=methods, ks=(1, 2, 3), ns=(32,), eval_limit=16)
    study_dir = run_study(world_copy, spec, "lowrank", progress=False, engine="inline")
    table = study_table(study_dir)
    assert table.complete and set(table.mean_rank.index) == set(methods)
    assert list(table.mean_rank.columns) == [1, 2, 3]
