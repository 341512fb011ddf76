"""A researcher's own world, end to end through the CLI, as the README shows it.

The world is made by `tests/realistic.py` (a Llama with a trained byte-level BPE tokenizer,
four PEFT adapters with mixed ranks and target modules, a CSV in the user's own schema): no
demo world anywhere, and every verb reads the workspace's `mashup.toml`.
"""

from __future__ import annotations

import json
import shutil

import pytest
import tomllib
from realistic import USER_MAPPING, build_user_world

from mashup_core.cli import main
from mashup_core.config import ConfigError, load_config, parse_config
from mashup_core.jobs.runner import wait
from mashup_core.models.loading import ModelLoadError, load_base_model, load_tokenizer
from mashup_core.workspace import Workspace

MAPPING_FLAGS = ["--prompt-field", USER_MAPPING["prompt"], "--choices-field",
                 ",".join(USER_MAPPING["choices"]), "--gold-field", USER_MAPPING["gold"],
                 "--gold-format", USER_MAPPING["gold_format"]]


@pytest.fixture
def session(user_world, tmp_path, monkeypatch):
    """A private copy of the user world and an empty workspace folder beside it."""
    world = tmp_path / "world"
    shutil.copytree(user_world["root"], world)
    monkeypatch.chdir(world)  # the user types relative paths from their project folder
    return world, tmp_path / "study"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_readme_session_on_a_users_own_world(session, capsys):
    world, study = session
    ws = ["--workspace", str(study)]
    code, out, err = run(capsys, "init", *ws, "--base", "base", "--source", "adapters",
                         "--target", "data/user.csv", *MAPPING_FLAGS)
    assert code == 0, err
    config = load_config(Workspace(study))
    assert config.base_model == str(world / "base") and config.sources == [str(world / "adapters")]
    (target,) = config.targets
    assert target["kind"] == "file" and target["mapping"]["choices"] == USER_MAPPING["choices"]
    # relative to where it was typed, stored so the pair of folders can move together
    stored = tomllib.loads((study / "mashup.toml").read_text())
    assert stored["base"]["model"] == str(world / "base")  # outside the workspace: absolute

    code, out, _ = run(capsys, "library", *ws, "--json")
    listing = json.loads(out)
    assert code == 0 and listing["rejected"] == []
    assert sorted(c["name"] for c in listing["checkpoints"]) == [
        "all-r16-rslora", "all-r8", "alpha-pattern", "qv-r4"]

    code, out, err = run(capsys, "score", *ws, "--target", "user", "--n", "16", "--scorer", "all",
                         "--json", "--no-progress")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["n"] == 16 and len(scores["table"]["rows"]) == 4 and scores["table"]["base"]
    assert scores["target"] == "user.csv (train)"

    # q,v-only next to all-linear: a cat merge covers the union of their modules, exactly
    code, out, err = run(capsys, "merge", *ws, "qv-r4", "all-r8", "--method", "cat", "--json",
                         "--out", str(study / "merges" / "qv+all"))
    assert code == 0, err
    merged = json.loads((study / "merges" / "qv+all" / "adapter_config.json").read_text())
    ranks = {m.rsplit(".", 1)[-1]: r for m, r in merged["rank_pattern"].items()}
    assert merged["r"] == 8 and ranks == {"q_proj": 12, "v_proj": 12}  # 4 + 8 where both are

    code, out, err = run(capsys, "new-spec", *ws, "--target", "user", "--kind", "mashup", "--k", "2",
                         "--method", "cat", "--steps", "6", "--batch-size", "8", "--eval-every", "3",
                         "--checkpoint-every", "3")
    assert code == 0, err
    spec = json.loads(out)
    assert spec["base_model"] == str(world / "base") and spec["library"] == [str(world / "adapters")]
    assert spec["target"]["name_or_path"] == str(world / "data" / "user.csv")
    assert spec["target"]["mapping"]["gold_format"] == "letter"
    (study / "spec.json").write_text(json.dumps(spec))

    code, out, err = run(capsys, "launch", *ws, str(study / "spec.json"), "--pair", "--json")
    assert code == 0, err
    pair = json.loads(out)
    records = {k: wait(Workspace(study), pair[k], timeout=300) for k in ("mashup_id", "baseline_id")}
    for record in records.values():
        assert record.state == "done", (record.status, (record.dir / "log.txt").read_text()[-2000:])
        assert [e["step"] for e in record.evals] == [0, 3, 6]
    assert len(records["mashup_id"].selection["selected"]) == 2

    code, out, err = run(capsys, "parity", *ws, "--scratch", pair["baseline_id"],
                         "--mashup", pair["mashup_id"], "--json")
    assert code == 0, err
    parity = json.loads(out)
    assert 0 <= parity["parity"] <= 1 and parity["seconds"]["scratch_training_s"] > 0

    # the leave-one-out grid over the workspace's own targets (here: one user file)
    code, out, err = run(capsys, "study", *ws, "--methods", "cat,ties", "--ks", "1,2", "--n", "8",
                         "--json", "--no-progress")
    assert code == 0, err
    study = json.loads(out)
    assert study["complete"] and study["finished"] == 5  # the base + 2 methods x 2 ks
    assert set(study["spec"]["tasks"]) == {"user"}


# --- bad input: a clear message, nothing lost ------------------------------------------------


def test_a_config_with_an_unknown_key_names_it_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"\[base\]: unknown key 'modle'; did you mean 'model'\?"):
        parse_config({"base": {"modle": "x"}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key 'sourcse'; did you mean 'sources'"):
        parse_config({"base": {"model": str(tmp_path)}, "library": {"sourcse": []}}, tmp_path)


def test_a_config_without_a_usable_base_says_what_to_give(session, capsys):
    world, study = session
    study.mkdir()
    (study / "mashup.toml").write_text('[library]\nsources = ["adapters"]\n')
    code, _, err = run(capsys, "library", "--workspace", str(study))
    assert code == 2 and "[base] model is missing: name the base model's folder or Hub id" in err
    (study / "mashup.toml").write_text('[base]\nmodel = "no/such/folder/here"\n')
    code, _, err = run(capsys, "library", "--workspace", str(study))
    assert code == 2 and "[base] model 'no/such/folder/here': no such folder" in err
    assert (study / "mashup.toml").read_text() == '[base]\nmodel = "no/such/folder/here"\n'  # untouched


def test_init_refuses_to_overwrite_a_workspace(session, capsys):
    _, study = session
    assert run(capsys, "init", "--workspace", str(study), "--base", "base")[0] == 0
    before = (study / "mashup.toml").read_text()
    code, _, err = run(capsys, "init", "--workspace", str(study), "--base", "base", "--source", "adapters")
    assert code == 2 and "mashup.toml exists already" in err
    assert (study / "mashup.toml").read_text() == before


def test_a_tokenizer_without_pad_pads_with_eos_and_one_without_either_is_refused(session):
    world, _ = session
    config = json.loads((world / "base" / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (world / "base" / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(world / "base")
    assert tok.pad_token == tok.eos_token == "<|eos|>"
    config.pop("eos_token", None)
    (world / "base" / "tokenizer_config.json").write_text(json.dumps(config))
    special = world / "base" / "special_tokens_map.json"
    if special.exists():
        special.write_text(json.dumps({k: v for k, v in json.loads(special.read_text()).items()
                                       if k not in ("pad_token", "eos_token")}))
    with pytest.raises(ModelLoadError, match="has no pad token and no eos token to pad with"):
        load_tokenizer(world / "base")


def test_an_adapter_of_another_base_is_rejected_and_the_rest_load(session, capsys, tmp_path):
    world, study = session
    other = build_user_world(tmp_path / "other", arch="gpt2", seed=3)  # other modules, other base
    shutil.copytree(other["adapters"]["all-r8"], world / "adapters" / "foreign")
    assert run(capsys, "init", "--workspace", str(study), "--base", "base", "--source", "adapters")[0] == 0
    code, out, _ = run(capsys, "library", "--workspace", str(study), "--json")
    listing = json.loads(out)
    assert code == 0 and len(listing["checkpoints"]) == 4
    (rejected,) = listing["rejected"]
    assert rejected["name"] == "foreign" and "base" in rejected["reason"]


def test_a_hub_id_while_offline_is_a_clear_error(session, capsys, monkeypatch):
    _, study = session
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(capsys, "init", "--workspace", str(study), "--base", "someone/some-model")[0] == 0
    code, _, err = run(capsys, "score", "--workspace", str(study), "--target", "data/user.csv",
                       *MAPPING_FLAGS, "--source", "adapters", "--no-progress")
    assert code == 2 and "someone/some-model" in err and "offline" in err.lower()


def test_linear_on_a_library_of_mixed_ranks_fails_before_scoring(session, monkeypatch):
    from mashup_core.selection import scoring
    from mashup_core.training import mashup_init

    world, _ = session
    scored = []
    monkeypatch.setattr(scoring, "score_library", lambda *a, **k: scored.append(1))
    model, tok = load_base_model(world / "base", device="cpu"), load_tokenizer(world / "base")
    with pytest.raises(mashup_init.PipelineError,
                       match=r"'linear' .* needs one rank, but the library mixes ranks 4, 8, 16; use 'cat'"):
        mashup_init.prepare_mashup_init(None, model, tok, [str(world / "adapters")], [], method="linear",
                                        out_dir=world / "merged")
    assert scored == []
