"""The adapter bank: every row with its own adapter, gathered; equal to PEFT, one at a time."""

from __future__ import annotations

import shutil
from dataclasses import asdict

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from realistic import ARCHITECTURES, USER_MAPPING, write_user_dataset

from mashup_core.data.targets import FieldMapping, load_file
from mashup_core.models.library import scan_library
from mashup_core.models.loading import load_base_model, load_tokenizer
from mashup_core.selection.bank import BankedModel, BankError, read_bank_adapter
from mashup_core.selection.loglik import choice_loglikelihoods, library_loglikelihoods
from mashup_core.selection.scoring import BASE_ROW, LibraryScorer, score_library


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bank-rows")
    return load_file(write_user_dataset(folder / "user.jsonl", n=12), FieldMapping(**USER_MAPPING))


def _alone(base, adapter, tok, rows):
    peft = PeftModel.from_pretrained(load_base_model(base, device="cpu", dtype=torch.float32),
                                     str(adapter))
    return choice_loglikelihoods(peft, tok, rows)


def _close(a, b, tol=1e-5) -> bool:
    return all(abs(x - y) <= tol for ra, rb in zip(a.logprobs, b.logprobs, strict=True)
               for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_mixed_rows_equal_peft_one_adapter_at_a_time(arch, arch_worlds, rows):
    """An all-linear rank-8 and a q/v rank-4 adapter (mixed ranks and modules) in one bank, the
    base rows beside them, in batches that mix them; each equal to PEFT with it alone."""
    base, adapters = arch_worlds[arch]
    tok = load_tokenizer(base)
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    bank = BankedModel(model, slots=3)
    names = [bank_name for bank_name in (read_bank_adapter(a).name for a in adapters)]
    for folder in adapters:
        bank.load(read_bank_adapter(folder))
    # batch_size 5 over 12 rows per adapter: forwards whose rows span two adapters
    got = library_loglikelihoods(bank, tok, rows, ["__base__", *names], batch_size=5)
    bare = bank.close()
    assert bare is model and not any(m._forward_hooks for m in model.modules()), "hooks removed"
    assert _close(got[0], choice_loglikelihoods(model, tok, rows))
    for folder, scores in zip(adapters, got[1:], strict=True):
        assert _close(scores, _alone(base, folder, tok, rows)), folder.name
        assert not _close(scores, got[0], 1e-3), "the adapter changes the model"


def test_patterns_and_rslora_as_peft_scales_them(user_world, rows):
    """rsLoRA, alpha_pattern and three ranks in one bank (the user world's library)."""
    base = user_world["base"]
    tok = load_tokenizer(base)
    checkpoints = scan_library([str(user_world["adapters_dir"])], base_model_dir=str(base)).checkpoints
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    table = score_library(model, tok, checkpoints, rows, progress=False)
    peft = score_library(model, tok, checkpoints, rows, progress=False, use_bank=False)
    for c in checkpoints:
        assert _close(table.choice_scores[c.name], peft.choice_scores[c.name]), c.name
    assert _close(table.choice_scores[BASE_ROW], peft.choice_scores[BASE_ROW])


def test_what_the_bank_does_not_compute_goes_through_peft(arch_worlds, rows, tmp_path):
    base, adapters = arch_worlds["llama"]
    tok = load_tokenizer(base)
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    torch.manual_seed(0)
    dora = get_peft_model(load_base_model(base, device="cpu", dtype=torch.float32),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                                     init_lora_weights=False))
    dora.save_pretrained(tmp_path / "lib" / "dora")
    with pytest.raises(BankError, match="DoRA"):
        read_bank_adapter(tmp_path / "lib" / "dora")
    for folder in adapters:
        shutil.copytree(folder, tmp_path / "lib" / folder.name)
    checkpoints = scan_library([str(tmp_path / "lib")], base_model_dir=str(base)).checkpoints
    table = score_library(model, tok, checkpoints, rows, progress=False)
    assert {r.name for r in table.rows} == {"dora", *(a.name for a in adapters)}
    assert _close(table.choice_scores["dora"], _alone(base, tmp_path / "lib" / "dora", tok, rows))


def test_later_rounds_load_nothing_and_memory_is_the_banks(arch_worlds, rows):
    """Halving asks again for survivors: they are in the bank already. The bank's memory is
    its slots', however many adapters pass through it."""
    base, adapters = arch_worlds["qwen2"]
    tok = load_tokenizer(base)
    checkpoints = scan_library([str(adapters[0].parent)], base_model_dir=str(base)).checkpoints
    model = load_base_model(base, device="cpu", dtype=torch.float32)
    with LibraryScorer(model, tok) as scorer:
        first = scorer.score(checkpoints, rows[:8], progress=False)
        loaded = scorer.loads
        again = scorer.score(checkpoints[:1], rows[8:], progress=False)
        assert scorer.loads == loaded == len(checkpoints), "round two copied nothing"
        assert again.rows[0].name == checkpoints[0].name and first.rows
        size = scorer.bank.nbytes()
    bank = BankedModel(load_base_model(base, device="cpu", dtype=torch.float32), slots=1)
    for _ in range(5):  # five loads through one slot: the same memory
        adapter = read_bank_adapter(adapters[0])
        bank.load(adapter)
        one_slot = bank.nbytes()
        bank.unload(adapter.name)
    assert one_slot <= size and bank.nbytes() == one_slot


def test_two_ray_workers_give_one_workers_table(tiny_world):
    """The library cut into the bank's groups, two workers each a share: the same table as one
    worker, float for float."""
    from mashup_core.data.targets import load_demo_task
    from mashup_core.models.library import demo_library
    from mashup_core.selection.fanout import score_library_ray, shares

    checkpoints = demo_library(tiny_world).checkpoints
    examples = load_demo_task(tiny_world, "rev", "train")[:8]
    model = load_base_model(tiny_world.base_dir, device="cpu")
    tok = load_tokenizer(tiny_world.base_dir)
    with LibraryScorer(model, tok, slots=4) as scorer:
        one = scorer.score(checkpoints, examples, progress=False)
    assert [len(r) for r in shares(len(checkpoints), 4, 2)] == [8, 8]
    two = score_library_ray(str(tiny_world.base_dir), checkpoints, examples, workers=2, slots=4)

    def values(rows):  # everything but the seconds each took
        return [{**asdict(r), "seconds": None} for r in rows]

    assert values(two.rows) == values(one.rows) and values([two.base]) == values([one.base])
    assert two.per_example == one.per_example and len(two.rows) == len(checkpoints)
