"""Merging LoRA adapters: exactness of each route, PEFT round trips, and every bad input."""

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
from mashup_core.cli.merge import FULL_METHODS, METHODS
from mashup_core.demo.tiny_model import TinyModelSpec, build_tiny_llama
from mashup_core.demo.world import load_split
from mashup_core.merging import lora as merging
from mashup_core.merging.lora import (
    MERGE_METHODS,
    AdapterFileError,
    MergeConfigError,
    load_lora_factors,
    merge_adapters,
    merge_factors,
)
from mashup_core.merging.objective import make_merge_objective
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.training.loop import ALL_LINEAR

TINY = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
DENSITY_METHODS = [m for m, spec in MERGE_METHODS.items() if spec.uses_density]


def random_adapter(root: Path, name: str, *, r: int = 4, alpha: int = 8, seed: int = 0,
                   targets=("q_proj", "v_proj"), spec: TinyModelSpec = TINY) -> Path:
    """A real PEFT adapter on a tiny random Llama, with non-zero B (not PEFT's zero init)."""
    model = build_tiny_llama(64, spec, seed=123)  # one base for every adapter of a test
    torch.manual_seed(seed)
    targets = targets if isinstance(targets, str) else list(targets)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(root / name)
    return root / name


def deltas(adapter_or_merge) -> dict[str, torch.Tensor]:
    return {name: f.delta() for name, f in adapter_or_merge.modules.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread


@pytest.fixture(scope="module")
def tok(tiny_world):
    return load_tokenizer(tiny_world.base_dir)


def fresh_base(ws):
    """A new base model each time: PEFT wraps models in place."""
    return load_base_model(ws.base_dir, device="cpu")


def logits(model, tokenizer, text="sort:dbca=") -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


# ------------------------------------------------------------------ exactness


def test_linear_of_one_adapter_reproduces_it_exactly(tiny_world, tmp_path):
    src = tiny_world.library_dir / "sort"
    record = merge_adapters([src], [1.0], "linear", tmp_path / "out")
    original, merged = load_file(src / merging.WEIGHTS_FILE), load_file(tmp_path / "out" / merging.WEIGHTS_FILE)
    assert merged.keys() == original.keys()
    for key, tensor in original.items():
        torch.testing.assert_close(merged[key], tensor, rtol=0, atol=0)
    config = json.loads((tmp_path / "out" / merging.CONFIG_FILE).read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    assert record.rank == 8 and record.method == "linear"


def test_cat_svd_of_one_adapter_at_its_rank_reproduces_its_delta_and_outputs(tiny_world, tmp_path, tok):
    src = tiny_world.library_dir / "sort"
    merge_adapters([src], [1.0], "cat_svd", tmp_path / "out", rank=8)
    original, merged = load_lora_factors([src])[0], load_lora_factors([tmp_path / "out"])[0]
    for name, delta in deltas(original).items():
        assert rel_err(merged.modules[name].delta(), delta) < 1e-5
    expected = logits(PeftModel.from_pretrained(fresh_base(tiny_world), src), tok)
    model = PeftModel.from_pretrained(fresh_base(tiny_world), tmp_path / "out")
    torch.testing.assert_close(logits(model, tok), expected, rtol=1e-4, atol=1e-4)


def test_cat_is_the_exact_weighted_sum_of_deltas_for_any_ranks_and_alphas(tmp_path):
    dirs = [random_adapter(tmp_path, "a", r=4, alpha=8, seed=1),
            random_adapter(tmp_path, "b", r=6, alpha=24, seed=2)]
    adapters, w = load_lora_factors(dirs), [0.7, -0.4]
    merged = merge_factors(adapters, w, "cat")
    assert merged.rank == 10
    for name, delta in deltas(merged).items():
        expected = sum(wi * a.modules[name].delta() for wi, a in zip(w, adapters, strict=True))
        assert rel_err(delta, expected) < 1e-6


def test_cat_svd_equals_dense_svd_truncation(tmp_path):
    dirs = [random_adapter(tmp_path, f"a{i}", r=4, seed=i) for i in range(3)]
    adapters, w = load_lora_factors(dirs), [0.5, 0.3, 0.2]
    fast = merge_factors(adapters, w, "cat_svd", rank=3)
    dense_route = merge_factors(adapters, w, "task_arithmetic", rank=3)
    for name in fast.modules:
        exact = sum(wi * a.modules[name].delta() for wi, a in zip(w, adapters, strict=True))
        U, S, Vh = torch.linalg.svd(exact)
        best = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]
        assert rel_err(fast.modules[name].delta(), best) < 1e-5
        assert rel_err(dense_route.modules[name].delta(), best) < 1e-5
        assert fast.modules[name].rank == 3


def test_linear_follows_the_reference_formula(tiny_world):
    adapters = load_lora_factors([tiny_world.library_dir / n for n in ("sort", "min")])
    merged = merge_factors(adapters, [0.7, 0.3], "linear")
    for name, f in merged.modules.items():
        a, b = (x.modules[name] for x in adapters)
        torch.testing.assert_close(f.A, 0.7 * a.A + 0.3 * b.A)
        torch.testing.assert_close(f.B, 0.7 * a.B + 0.3 * b.B)
        assert f.scale == a.scale == 2.0


def test_per_module_ranks_and_alphas_survive_the_round_trip_through_peft(tmp_path):
    model = build_tiny_llama(64, TINY, seed=123)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 6})
    original = get_peft_model(model, config)
    original.save_pretrained(tmp_path / "src")
    src = tmp_path / "src"
    merge_adapters([src, src], [0.5, 0.5], "cat", tmp_path / "out")  # = the adapter itself
    saved = json.loads((tmp_path / "out" / merging.CONFIG_FILE).read_text())
    assert (saved["r"], saved["lora_alpha"]) == (8, 16)
    assert saved["rank_pattern"] == {"model.layers.0.self_attn.v_proj": 4}
    assert saved["alpha_pattern"] == {"model.layers.0.self_attn.v_proj": 12}
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    merged = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ different target modules

MIXED_WEIGHTS = [0.7, -0.4]


@pytest.fixture
def qv_and_all_linear(tmp_path) -> list[Path]:
    """A classic q_proj,v_proj r=4 LoRA and an all-linear r=8 one (alpha 24) of one base."""
    return [random_adapter(tmp_path, "qv", r=4, alpha=8, seed=1),
            random_adapter(tmp_path, "all", r=8, alpha=24, seed=2, targets=ALL_LINEAR)]


def test_cat_of_different_target_modules_is_the_exact_sum_over_their_union(qv_and_all_linear, tmp_path):
    qv, every = adapters = load_lora_factors(qv_and_all_linear)
    assert qv.modules.keys() < every.modules.keys()
    merged = merge_factors(adapters, MIXED_WEIGHTS, "cat")
    assert merged.modules.keys() == every.modules.keys()
    w_qv, w_all = MIXED_WEIGHTS
    for name, delta in deltas(merged).items():
        expected = w_all * every.modules[name].delta()
        if name in qv.modules:
            expected = expected + w_qv * qv.modules[name].delta()
            assert merged.modules[name].rank == 12
        else:  # only the all-linear adapter: its weighted ΔW at its own rank
            assert merged.modules[name].rank == 8
        assert rel_err(delta, expected) < 1e-6

    # Saved, the union loads in PEFT and gives the logits of base + Σ w·ΔW applied by hand,
    # and of PEFT's own cat of the two adapters.
    merge_adapters(qv_and_all_linear, MIXED_WEIGHTS, "cat", tmp_path / "out")
    config = json.loads((tmp_path / "out" / merging.CONFIG_FILE).read_text())
    assert sorted(config["target_modules"]) == sorted(n.removeprefix(merging.PEFT_PREFIX) for n in every.modules)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    loaded = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")
    by_hand = build_tiny_llama(64, TINY, seed=123)
    with torch.no_grad():
        for name, delta in deltas(merged).items():
            by_hand.get_submodule(name.removeprefix(merging.PEFT_PREFIX)).weight += delta
        got, want = loaded(ids).logits, by_hand(ids).logits
        peft_cat = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), qv_and_all_linear[0],
                                             adapter_name="qv")
        peft_cat.load_adapter(qv_and_all_linear[1], adapter_name="all")
        peft_cat.add_weighted_adapter(["qv", "all"], MIXED_WEIGHTS, "cat", combination_type="cat")
        peft_cat.set_adapter("cat")
        theirs = peft_cat(ids).logits
        base = build_tiny_llama(64, TINY, seed=123)(ids).logits
    assert (want - base).abs().max() > 1e-2  # the deltas matter
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, theirs, rtol=0, atol=1e-5)


def test_a_merge_of_different_target_modules_fits_a_live_slot(qv_and_all_linear, tmp_path):
    """What the weight search does: a slot shaped from the first adapter's config must still
    cover the union, or the merge has nowhere to go."""
    adapters = load_lora_factors(qv_and_all_linear)
    merged = merge_factors(adapters, MIXED_WEIGHTS, "cat_svd", rank=6)
    model = merging.add_merge_slot(build_tiny_llama(64, TINY, seed=123), merged, adapters[0].config)
    merging.load_into_peft(model, merged)
    merge_adapters(qv_and_all_linear, MIXED_WEIGHTS, "cat_svd", tmp_path / "out", rank=6)
    saved = PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, saved(ids).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["cat_svd", "task_arithmetic"])
def test_truncating_methods_merge_the_union_and_load_in_peft(qv_and_all_linear, tmp_path, method):
    adapters = load_lora_factors(qv_and_all_linear)
    merge_adapters(qv_and_all_linear, MIXED_WEIGHTS, method, tmp_path / "out", rank=32)  # no cut
    merged = load_lora_factors([tmp_path / "out"])[0]
    assert merged.modules.keys() == adapters[1].modules.keys()
    for name, delta in deltas(merged).items():
        expected = sum(w * a.modules[name].delta() for w, a in zip(MIXED_WEIGHTS, adapters, strict=True)
                       if name in a.modules)
        assert rel_err(delta, expected) < 1e-5
    PeftModel.from_pretrained(build_tiny_llama(64, TINY, seed=123), tmp_path / "out")


@pytest.mark.parametrize("sign", merging.SIGN_METHODS)
def test_ties_over_the_union_equals_peft_on_zero_padded_deltas(qv_and_all_linear, sign):
    adapters = load_lora_factors(qv_and_all_linear)
    merged = merge_factors(adapters, MIXED_WEIGHTS, "ties", density=0.3, rank=32,
                           majority_sign_method=sign)
    assert merged.modules.keys() == adapters[1].modules.keys()
    for name, delta in deltas(merged).items():
        present = adapters[1].modules[name]
        blocks = list(merging._row_blocks(present.B.shape[0], present.A.shape[1], 2))
        tasks = [merging.dense_delta(a.modules[name], blocks) if name in a.modules
                 else torch.zeros(present.B.shape[0], present.A.shape[1]) for a in adapters]
        expected = merge_utils.ties(tasks, torch.tensor(MIXED_WEIGHTS), 0.3, sign)
        assert rel_err(delta, expected) < 1e-5


def test_linear_refuses_different_target_modules_and_names_cat(qv_and_all_linear):
    adapters = load_lora_factors(qv_and_all_linear)  # loading alone accepts them
    with pytest.raises(MergeConfigError, match=r"'linear' .* needs the same target modules .* qv and all "
                                               r"differ \(0 only in qv, 5 only in all.*use 'cat' or "
                                               r"'cat_svd', which merge adapters with different target "
                                               r"modules exactly"):
        merge_factors(adapters, [0.5, 0.5], "linear")


def test_different_fan_in_fan_out_is_refused(tmp_path):
    dirs = [random_adapter(tmp_path, "a"), random_adapter(tmp_path, "b", targets=ALL_LINEAR, seed=1)]
    config = json.loads((dirs[1] / merging.CONFIG_FILE).read_text())
    (dirs[1] / merging.CONFIG_FILE).write_text(json.dumps({**config, "fan_in_fan_out": True}))
    with pytest.raises(MergeConfigError, match="a and b differ in fan_in_fan_out"):
        load_lora_factors(dirs)


@pytest.mark.parametrize("method", ["ties", "magnitude_prune"])
def test_row_blocked_magnitude_methods_match_peft_on_the_whole_matrix(tmp_path, monkeypatch, method):
    monkeypatch.setattr(merging, "BLOCK_BYTES", 2 * 4 * 32 * 3)  # two rows per block: many blocks
    dirs = [random_adapter(tmp_path, f"a{i}", r=4, seed=i) for i in range(3)]
    adapters, w = load_lora_factors(dirs), [0.5, 0.3, 0.2]
    merged = merge_factors(adapters, w, method, density=0.3, rank=32)  # full rank: no truncation
    peft_fn = getattr(merge_utils, method)
    for name, delta in deltas(merged).items():
        # PEFT on the very ΔW the blocks see: the comparison is exact by construction on any CPU
        factors = [a.modules[name] for a in adapters]
        blocks = list(merging._row_blocks(factors[0].B.shape[0], factors[0].A.shape[1], 3))
        assert len(blocks) > 1
        tasks = [merging.dense_delta(f, blocks) for f in factors]
        assert rel_err(delta, peft_fn(tasks, torch.tensor(w), 0.3)) < 1e-5


def test_dare_is_a_function_of_the_seed_and_leaves_the_global_rng_alone(tiny_world):
    adapters = load_lora_factors([tiny_world.library_dir / n for n in ("sort", "min")])
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = deltas(merge_factors(adapters, [0.5, 0.5], "dare_linear", density=0.5, seed=1))
    b = deltas(merge_factors(adapters, [0.5, 0.5], "dare_linear", density=0.5, seed=1))
    c = deltas(merge_factors(adapters, [0.5, 0.5], "dare_linear", density=0.5, seed=2))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", DENSITY_METHODS)
def test_pruning_merges_load_in_peft_and_change_the_model(tiny_world, tmp_path, tok, method):
    dirs = [tiny_world.library_dir / n for n in ("sort", "min")]
    merge_adapters(dirs, [0.6, 0.4], method, tmp_path / method, density=0.5)
    before = logits(fresh_base(tiny_world), tok)
    merged = PeftModel.from_pretrained(fresh_base(tiny_world), tmp_path / method)
    after = logits(merged, tok)
    assert (after - before).abs().max() > 1e-2
    with merged.disable_adapter():
        torch.testing.assert_close(logits(merged, tok), before)


# ------------------------------------------------------------------ records and atomic writes


def test_merge_record_names_inputs_params_and_time(tiny_world, tmp_path):
    dirs = [tiny_world.library_dir / n for n in ("sort", "min")]
    merge_adapters(dirs, [0.5, 0.5], "ties", tmp_path / "out", density=0.4, rank=6)
    record = json.loads((tmp_path / "out" / merging.RECORD_FILE).read_text())
    assert [Path(i["path"]).name for i in record["inputs"]] == ["sort", "min"]
    assert all(len(i["sha256"]) == 64 for i in record["inputs"])
    # every parameter of the method, defaults included; no seed: TIES draws no random numbers
    assert record["params"] == {"density": 0.4, "rank": 6, "majority_sign_method": "total",
                                "normalize": "count", "lambda": 1.0}
    assert record["rank"] == 6 and record["seconds"] > 0
    recipe = (tmp_path / "out" / "mergekit_config.yml").read_text()
    assert "merge_method: ties" in recipe and "mergekit has no such method" in recipe
    assert "## Inputs" in (tmp_path / "out" / "README.md").read_text()
    assert record["base_model"] == str(tiny_world.base_dir.resolve())
    assert json.loads((tmp_path / "out" / merging.CONFIG_FILE).read_text())["r"] == 6


def test_existing_output_is_kept_unless_overwrite(tiny_world, tmp_path):
    src = [tiny_world.library_dir / "sort"]
    merge_adapters(src, [1.0], "linear", tmp_path / "out")
    with pytest.raises(MergeConfigError, match="already exists"):
        merge_adapters(src, [0.5], "linear", tmp_path / "out")
    merge_adapters(src, [0.5], "linear", tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / merging.RECORD_FILE).read_text())["weights"] == [0.5]


def test_a_merge_killed_while_writing_leaves_nothing(tiny_world, tmp_path, monkeypatch):
    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(merging, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        merge_adapters([tiny_world.library_dir / "sort"], [1.0], "linear", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ in-memory search objective


def test_objective_writes_merges_into_a_slot_and_scores_them(tiny_world, tok):
    from mashup_core.selection.loglik import evaluate_mc

    names = ("sort", "min")
    adapters = load_lora_factors([tiny_world.library_dir / n for n in names])
    examples = load_split(tiny_world, "sort", "validation")[:24]
    objective = make_merge_objective(fresh_base(tiny_world), tok, adapters, examples, "linear", metric="nll")
    assert objective.maximize is False
    for i, name in enumerate(names):
        one_hot = [float(j == i) for j in range(2)]
        reference = PeftModel.from_pretrained(fresh_base(tiny_world), tiny_world.library_dir / name)
        expected = evaluate_mc(reference, tok, examples).nll
        assert objective(one_hot) == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ bad input


def test_linear_refuses_mismatched_ranks_and_names_the_way_out(tmp_path):
    adapters = load_lora_factors([random_adapter(tmp_path, "a", r=4), random_adapter(tmp_path, "b", r=6)])
    with pytest.raises(MergeConfigError, match=r"needs equal ranks.*a has rank 4 and b rank 6.*'cat_svd'"):
        merge_factors(adapters, [0.5, 0.5], "linear")


def test_adapters_of_different_base_models_are_refused(tiny_world, tmp_path):
    other = random_adapter(tmp_path, "other", targets=ALL_LINEAR,
                           spec=TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48))
    with pytest.raises(MergeConfigError, match="different base models"):
        load_lora_factors([tiny_world.library_dir / "sort", other])


def test_wrong_number_of_weights_is_refused_before_any_file_is_read(tmp_path):
    with pytest.raises(MergeConfigError, match="got 1 weights for 2 inputs"):
        merge_adapters([tmp_path / "missing-a", tmp_path / "missing-b"], [1.0], "linear", tmp_path / "out")


@pytest.mark.parametrize(("method", "options", "message"), [
    ("ties", {}, r"method 'ties' needs a density in \(0, 1\], e.g. 0.5"),
    ("ties", {"density": 1.5}, r"ties: density must be in \(0, 1\], got 1.5"),
    ("linear", {"density": 0.5}, r"method 'linear' does not use density: they would be ignored, "
                                 r"so drop them \('linear' takes no parameters\)"),
    ("linear", {"rank": 4}, "method 'linear' does not use rank"),
    ("cat_svd", {"rank": 0}, r"cat_svd: rank must be ≥ 1, got 0"),
    ("ties", {"density": 0.5, "majority_sign_method": "vote"},
     r"ties: majority_sign_method must be one of 'total', 'frequency', got 'vote'"),
    ("ties", {"density": 0.5, "params": {"normalize": "mean"}}, r"normalize must be one of 'count', true, false"),
    ("core_ties", {"density": 0.5, "params": {"gamma": 0.1}}, r"'core_ties' does not use gamma"),
    ("svd", {}, r"unknown merge method 'svd' for LoRA adapters; choose from linear, cat, cat_svd"),
    ("slerp", {}, r"'slerp' is a method for full checkpoints"),
    ("linear", {"params": {"lamda": 2}}, r"unknown parameter 'lamda' \(did you mean 'lambda'\?\)"),
])
def test_bad_method_parameters_are_named(method, options, message):
    with pytest.raises(MergeConfigError, match=message):
        merging.validate_params(method, 2, [0.5, 0.5], **options)


def test_pickle_adapters_are_refused_with_a_conversion_hint(tiny_world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_world.library_dir / "sort", bad)
    (bad / merging.WEIGHTS_FILE).rename(bad / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match=r"pickle weights \(adapter_model.bin\).*weights_only=True"):
        load_lora_factors([bad])


def test_non_finite_tensors_are_refused_naming_the_tensor(tiny_world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_world.library_dir / "sort", bad)
    tensors = load_file(bad / merging.WEIGHTS_FILE)
    key = sorted(tensors)[3]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, bad / merging.WEIGHTS_FILE)
    with pytest.raises(AdapterFileError, match=f"tensor '{key}' holds NaN or infinite values"):
        load_lora_factors([bad])


def test_corrupted_safetensors_are_refused(tiny_world, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_world.library_dir / "sort", bad)
    weights = bad / merging.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(AdapterFileError, match="not a readable safetensors file.*damaged or truncated"):
        load_lora_factors([bad])


def test_a_folder_without_adapter_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="no adapter_config.json"):
        load_lora_factors([tmp_path / "empty"])


# ------------------------------------------------------------------ CLI


def test_cli_help_lists_every_registered_method():
    from mashup_core.merging.full import FULL_MERGE_METHODS

    assert set(METHODS) == set(MERGE_METHODS)
    assert set(FULL_METHODS) == set(FULL_MERGE_METHODS)


def test_cli_merge_by_library_names(tiny_world, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["merge", "sort", "min", "--workspace", str(tiny_world.root), "--method", "cat_svd",
                 "--rank", "4", "--out", str(out), "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["weights"] == [0.5, 0.5] and record["rank"] == 4
    assert (out / merging.WEIGHTS_FILE).exists()


def test_cli_merge_reports_bad_weights_as_a_user_error(tiny_world, tmp_path, capsys):
    code = main(["merge", "sort", "min", "--workspace", str(tiny_world.root), "--weights", "1",
                 "--out", str(tmp_path / "m")])
    assert code == 2
    assert "got 1 weights for 2 inputs" in capsys.readouterr().err


def test_cli_search_weights_runs_the_budget_and_writes_the_best_merge(tiny_world, tmp_path, capsys):
    out = tmp_path / "best"
    code = main(["search-weights", "sort", "min", "--workspace", str(tiny_world.root), "--target", "min",
                 "--budget", "4", "--n", "8", "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [h["eval"] for h in report["history"]] == [0, 1, 2, 3]
    assert report["history"][0]["weights"] == [0.5, 0.5]  # CMA-ES starts from equal weights
    assert all(0 <= w <= 1 for w in report["weights"])
    assert report["best_value"] == max(h["value"] for h in report["history"])
    saved = json.loads((out / merging.RECORD_FILE).read_text())
    assert saved["weights"] == report["weights"]
    assert saved["extra"]["search"]["strategy"] == "cmaes"


def test_cli_search_weights_names_an_unknown_target(tiny_world, capsys):
    code = main(["search-weights", "sort", "--workspace", str(tiny_world.root), "--target", "nope"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no target 'nope': not a demo task (rev, tail," in err and "not a file" in err
