"""Every full-checkpoint method against mergekit 0.1.5, bit for bit.

Two ways, so the comparison runs with or without mergekit installed:

- fixtures: tensors stored from one mergekit run (tests/data/mergekit, written by its
  make_fixtures.py) on tiny Llama checkpoints, fp32 and bf16; the same configs merged here
  (`merge_config`, inputs one file or sharded, output sharded or not) must equal them (the
  trigonometric methods to 2 ulps: another CPU gives them other last bits, `ACROSS_CPUS`).
- live: where mergekit is installed (`pip install mergekit==0.1.5`), mergekit itself merges the
  same configs and our output must equal its output.

Random methods run at density 1 in the configs; their masks are compared separately, drawn
from the same generator state (DARE, DELLA) or checked for their statistics.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mergekit_cases as cases
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mashup_core.merging import elementwise
from mashup_core.merging.full import FULL_MERGE_METHODS, merge_config

DATA = Path(__file__).parent / "data" / "mergekit"
HAS_MERGEKIT = importlib.util.find_spec("mergekit") is not None
needs_mergekit = pytest.mark.skipif(not HAS_MERGEKIT, reason="mergekit is not installed "
                                    "(optional: `pip install mergekit==0.1.5`); the fixture "
                                    "comparison covers the same configs")
RUNS = [(dtype, case, native) for dtype in cases.DTYPES for case in cases.CASES
        for native in ((False, True) if dtype == "bf16" and case in cases.NATIVE_BF16 else (False,))]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny matrices, one thread


@pytest.fixture(scope="module")
def stored() -> dict[str, dict[str, torch.Tensor]]:
    return {dtype: load_file(DATA / f"parity_{dtype}.safetensors") for dtype in cases.DTYPES}


@pytest.fixture(scope="module")
def roots(stored, tmp_path_factory) -> dict[str, Path]:
    """The stored inputs written as checkpoint folders, some in one file and some sharded."""
    meta = json.loads((DATA / "cases.json").read_text())
    out = {}
    for dtype, tensors in stored.items():
        states: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            kind, model, name = key.split("/", 2)
            if kind == "inputs":
                states.setdefault(model, {})[name] = tensor
        out[dtype] = tmp_path_factory.mktemp(f"inputs-{dtype}")
        cases.write_models(states, out[dtype], meta["model_config"])
    return out


def _ours(case: str, dtype: str, native: bool, root: Path, out: Path, shard_bytes: int) -> dict:
    path = out.with_suffix(".yml")
    path.write_text(yaml.safe_dump(cases.config(case, dtype, native, root)))
    merged, unused = merge_config(path, out, max_shard_bytes=shard_bytes)
    assert unused == []
    return {k: v for f in sorted(merged.glob("*.safetensors")) for k, v in load_file(f).items()}


# Computed through acos, sin and an iterated mean: libm and torch's vectorised kernels give
# other last bits on another CPU, so against fixtures stored elsewhere these are compared to
# 2 ulps; against mergekit run here (the live test), bit for bit like every other method.
ACROSS_CPUS = {"slerp", "nuslerp", "multislerp", "karcher"}


def _assert_equal(ours: dict, theirs: dict, *, ulps: int = 0) -> None:
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        gap = (name, float((ours[name].double() - tensor.double()).abs().max()))
        if ulps:
            torch.testing.assert_close(ours[name], tensor, rtol=ulps * torch.finfo(tensor.dtype).eps,
                                       atol=1e-8, msg=str(gap))
        else:
            assert torch.equal(ours[name], tensor), gap


def test_the_fixtures_cover_every_full_method():
    assert {c["merge_method"] for c in cases.CASES.values()} == set(FULL_MERGE_METHODS)
    meta = json.loads((DATA / "cases.json").read_text())
    assert meta["mergekit"] == "0.1.5" and meta["cases"] == json.loads(json.dumps(cases.CASES))


@pytest.mark.parametrize(("dtype", "case", "native"), RUNS,
                         ids=[f"{d}-{cases.fixture_key(c, n)}" for d, c, n in RUNS])
def test_each_method_equals_mergekits_stored_output(stored, roots, tmp_path, dtype, case, native):
    prefix = f"outputs/{cases.fixture_key(case, native)}/"
    theirs = {k.removeprefix(prefix): v for k, v in stored[dtype].items() if k.startswith(prefix)}
    assert theirs
    shard_bytes = 3_000 if case in ("ties", "linear") else 2 * 1024**3  # sharded output too
    ulps = 2 if cases.CASES[case]["merge_method"] in ACROSS_CPUS else 0
    _assert_equal(_ours(case, dtype, native, roots[dtype], tmp_path / "m", shard_bytes), theirs,
                  ulps=ulps)


@needs_mergekit
@pytest.mark.parametrize("dtype", list(cases.DTYPES))
@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_each_method_equals_mergekit_run_now(stored, tmp_path, dtype, sharded):
    """mergekit on inputs sharded two ways (all in one file, or every model sharded), ours on
    the same: equal for every case; and equal to the stored fixture (which is not stale)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    meta = json.loads((DATA / "cases.json").read_text())
    states: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in stored[dtype].items():
        kind, model, name = key.split("/", 2)
        if kind == "inputs":
            states.setdefault(model, {})[name] = tensor
    shards = {m: "4KB" for m in states} if sharded else {m: None for m in states}
    cases.write_models(states, tmp_path, meta["model_config"], shards)
    for d, case, native in RUNS:
        if d != dtype:
            continue
        key = cases.fixture_key(case, native)
        run_merge(MergeConfiguration.model_validate(cases.config(case, dtype, native, tmp_path)),
                  str(tmp_path / f"mk-{key}"),
                  MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
        theirs = {k: v for f in sorted((tmp_path / f"mk-{key}").glob("*.safetensors"))
                  for k, v in load_file(f).items()}
        _assert_equal(_ours(case, dtype, native, tmp_path, tmp_path / f"ours-{key}", 2 * 1024**3), theirs)
        prefix = f"outputs/{key}/"
        _assert_equal({k.removeprefix(prefix): v for k, v in stored[dtype].items()
                       if k.startswith(prefix)}, theirs)


# --------------------------------------------------------------------------- random masks


@needs_mergekit
@pytest.mark.parametrize("rescale", ["1/density", True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dare_drops_are_mergekits_mask_from_the_same_generator_state(rescale, dtype):
    from mergekit.sparsify import RescaleNorm, bernoulli

    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
    torch.manual_seed(5)
    theirs = bernoulli(x, 0.3, RescaleNorm.l1 if rescale is True else None)
    if rescale == "1/density":  # PEFT's and the DARE paper's rescale, on mergekit's mask
        theirs = theirs / 0.3
    ours = elementwise.drop_random(x, 0.3, torch.Generator().manual_seed(5), rescale)
    assert torch.equal(ours, theirs)


@needs_mergekit
@pytest.mark.parametrize("rescale", [True, False])
def test_della_drops_are_mergekits_mask_from_the_same_generator_state(rescale):
    from mergekit.sparsify import RescaleNorm, della_magprune

    x = torch.randn(40, 56, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    theirs = della_magprune(x, 0.4, 0.1, RescaleNorm.l1 if rescale else None)
    assert torch.equal(elementwise.drop_by_magnitude_rank(x, 0.4, 0.1, torch.Generator().manual_seed(7),
                                                          rescale), theirs)


def test_dare_keeps_density_of_the_entries_and_is_unbiased():
    """Statistics of the drops (no mergekit needed): the kept share is the density; with
    1/density the mean over draws is the tensor; with L1 the tensor keeps its L1 norm."""
    x = torch.randn(200, 100, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([elementwise.drop_random(x, 0.25, gen, "1/density") for _ in range(400)])
    kept = (draws != 0).float().mean()
    assert abs(float(kept) - 0.25) < 0.005
    assert float((draws.mean(0) - x).abs().mean()) < 0.1 * float(x.abs().mean())
    l1 = elementwise.drop_random(x, 0.25, gen, True)
    assert torch.isclose(l1.abs().sum(), x.abs().sum(), rtol=1e-5)
    assert torch.equal(elementwise.drop_random(x, 1.0, gen), x)


def test_della_keeps_large_entries_more_often_and_density_on_average():
    x = torch.randn(64, 400, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(1)
    kept = torch.stack([elementwise.drop_by_magnitude_rank(x, 0.5, 0.3, gen, False) != 0
                        for _ in range(200)]).float().mean(0)
    assert abs(float(kept.mean()) - 0.5) < 0.01
    order = x.abs().argsort(dim=1)
    smallest, largest = kept.gather(1, order[:, :40]).mean(), kept.gather(1, order[:, -40:]).mean()
    assert float(smallest) < 0.25 and float(largest) > 0.75  # density ∓ epsilon at the ends
