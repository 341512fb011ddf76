"""Fixtures shaped like real checkpoints, built offline with transformers/tokenizers/peft only.

The demo world uses a character tokenizer and one Llama; real libraries do not. Here every
base has a trained byte-level BPE tokenizer that pads on the left and prepends BOS, and one of
eight real architectures (fused projections, Conv1D, sliding-window layers) at toy size. The
adapters are PEFT LoRAs with mixed ranks, targets, rsLoRA and alpha patterns and non-zero B,
saved exactly as PEFT saves them. Nothing here imports `mashup_core`, so the fixtures stay
valid while the package is restructured.

Test modules use them with `from realistic import user_world, arch_worlds  # noqa: F401`
(pytest puts tests/ on sys.path). Ruff then reports F811 at every test that takes the fixture
as an argument; binding it by assignment instead (`arch_worlds = realistic.arch_worlds`) is clean.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
VOCAB_SIZE = 640  # 256 bytes + 3 specials + merges; small enough that rarer words split

# --- the user's dataset vocabulary ------------------------------------------------------------
# Small fact tables; questions, distractors and the tokenizer corpus are all drawn from them.

FRUIT_COLORS = {
    "banana": "yellow", "lemon": "yellow", "cherry": "red", "strawberry": "red",
    "tomato": "red", "grape": "purple", "plum": "purple", "lime": "green", "kiwi": "green",
    "orange": "orange", "apricot": "orange", "blueberry": "blue", "coconut": "brown",
}
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "brown", "white", "black", "pink")
ANIMAL_SOUNDS = {
    "dog": "bark", "cat": "meow", "cow": "moo", "lion": "roar", "duck": "quack",
    "snake": "hiss", "owl": "hoot", "horse": "neigh", "sheep": "baa", "bee": "buzz",
    "frog": "croak", "mouse": "squeak",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad",
    "light": "dark", "early": "late", "open": "closed", "full": "empty", "strong": "weak",
    "young": "old", "loud": "quiet", "rich": "poor", "wet": "dry",
}
CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo", "Spain": "Madrid",
    "Kenya": "Nairobi", "Canada": "Ottawa", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
}
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)
_FILLER_TEXT = (
    "the a an and or but of in on at to from with for by about after before people time year "
    "day way man woman child world life hand part place case week company system program "
    "question answer work number night point home water room mother area money story fact "
    "month lot right study book eye job word business issue side kind head house service "
    "friend father power hour game line end member law car city community name president team "
    "minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher "
    "force education is was are were be have has had do does did say says said go goes went "
    "make makes made know knows knew think take see come want look use find give tell ask "
    "seem feel try leave call good new first last long great little own other old right "
    "different small large next important few public bad same able very often always never "
    "sometimes usually quickly slowly together because although while during between under"
)
FILLER = tuple(_FILLER_TEXT.split())


# --- tokenizer --------------------------------------------------------------------------------


def _corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """English-like sentences covering every dataset word, so the BPE learns them as pieces."""
    rng = random.Random(f"corpus/{seed}")
    fruit, animals, words, countries = (list(FRUIT_COLORS), list(ANIMAL_SOUNDS),
                                        list(OPPOSITES), list(CAPITALS))
    lines: list[str] = []
    for i in range(n):
        kind = i % 7
        if kind == 0:
            f = rng.choice(fruit)
            lines.append(f"A ripe {f} is {FRUIT_COLORS[f]}. The {f} was {rng.choice(COLORS)} before.")
        elif kind == 1:
            a = rng.choice(animals)
            lines.append(f"The {a} makes a {ANIMAL_SOUNDS[a]} sound. A {a} can {ANIMAL_SOUNDS[a]} at night.")
        elif kind == 2:
            a, b = rng.randrange(10), rng.randrange(9)
            lines.append(f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.")
        elif kind == 3:
            w = rng.choice(words)
            lines.append(f"The opposite of {w} is {OPPOSITES[w]}, and {OPPOSITES[w]} is not {w}.")
        elif kind == 4:
            c = rng.choice(countries)
            lines.append(f"{CAPITALS[c]} is the capital city of {c}. People in {c} visit {CAPITALS[c]}.")
        elif kind == 5:
            lines.append(_question_row(rng, 0)["question"] + "\nAnswer: " + rng.choice(COLORS))
        else:
            lines.append(" ".join(rng.choice(FILLER) for _ in range(rng.randint(6, 16))).capitalize() + ".")
    return lines


def build_bpe_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here (the kind Llama 3/Qwen/GPT-2 ship), saved to `folder`.

    Real tokenizers split words into pieces, pad on the left and prepend BOS; the demo's
    character tokenizer does none of that, so code tested only on it can hide seam bugs.
    Same corpus and settings every run, so the files are identical every run.
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=[BOS, EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = core.token_to_id(BOS)
    assert [core.token_to_id(t) for t in (BOS, EOS, PAD)] == list(SPECIAL_IDS.values())
    core.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)],
        ),
    ])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        padding_side="left", model_max_length=256,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


# --- architectures ----------------------------------------------------------------------------


# Special-token ids as `build_bpe_tokenizer` assigns them (the trainer's order: BOS, EOS, PAD);
# every config carries them, as a real checkpoint's config matches its tokenizer.
SPECIAL_IDS = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}


def _llama(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, **SPECIAL_IDS))


def _qwen2(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # q/k/v carry biases in Qwen2
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, **SPECIAL_IDS))


def _mistral(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    return MistralForCausalLM(MistralConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        sliding_window=4096, tie_word_embeddings=False, **SPECIAL_IDS))


def _gemma3(vocab_size: int, seed: int) -> PreTrainedModel:
    """Gemma 3 text: scaled embeddings, q/k norms, and a sliding-window layer with a window
    shorter than the prompts, so padding and cache handling meet a real window."""
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
        **SPECIAL_IDS))


def _phi3(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # fused qkv_proj and gate_up_proj
    return Phi3ForCausalLM(Phi3Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        original_max_position_embeddings=256, tie_word_embeddings=False, **SPECIAL_IDS))


def _gpt2(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # Conv1D layers (weights stored transposed), learned positions
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256,
        **SPECIAL_IDS))


def _gpt_neox(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # fused query_key_value, partial rotary, parallel residual
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        tie_word_embeddings=False, **SPECIAL_IDS))


def _olmo2(vocab_size: int, seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)  # norms after attention/MLP, q/k norms over the whole projection
    return Olmo2ForCausalLM(Olmo2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, **SPECIAL_IDS))


ARCHITECTURES: dict[str, Callable[[int, int], PreTrainedModel]] = {
    "llama": _llama, "qwen2": _qwen2, "mistral": _mistral, "gemma3": _gemma3,
    "phi3": _phi3, "gpt2": _gpt2, "gpt_neox": _gpt_neox, "olmo2": _olmo2,
}

# Attention query/value projections per `config.model_type`: what a "q,v" LoRA targets.
# Fused architectures have one module holding q, k and v.
QV_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"], "olmo2": ["q_proj", "v_proj"], "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"],
}

# Every linear layer of one transformer block, per `config.model_type` (what "all-linear" hits).
BLOCK_LINEARS: dict[str, set[str]] = {
    **dict.fromkeys(("llama", "qwen2", "mistral", "gemma3_text", "olmo2"), {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"},
}


def qv_targets(model_or_type: PreTrainedModel | str) -> list[str]:
    """The q/v LoRA targets of an architecture (a model or its `config.model_type`)."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    return list(QV_TARGETS[model_type])


def build_base(arch: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    """A tiny random `arch` model whose vocabulary and special ids match `tokenizer`."""
    model = ARCHITECTURES[arch](len(tokenizer), seed)
    for name in ("pad", "bos", "eos"):
        assert getattr(model.config, f"{name}_token_id") == getattr(tokenizer, f"{name}_token_id")
    return model.eval()


def save_base(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    """Save a base as a Hub snapshot looks: config, safetensors weights, tokenizer files."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# --- adapters ---------------------------------------------------------------------------------


def make_adapter(
    base_folder: str | Path,
    out_folder: str | Path,
    *,
    r: int,
    target_modules: list[str] | str,
    seed: int,
    use_rslora: bool = False,
    alpha_pattern: dict[str, float] | None = None,
    rank_pattern: dict[str, int] | None = None,
    lora_alpha: float | None = None,
    train_steps: int = 0,
) -> Path:
    """A LoRA saved by PEFT itself, with non-zero B so it changes the model like a trained one.

    `init_lora_weights=False` keeps PEFT's random init for both A and B (a fresh adapter has
    B = 0 and would hide any bug that drops or mis-scales the delta). `base_model_name_or_path`
    is the absolute base folder, as PEFT writes it for a model loaded from a local path.
    """
    base_folder = Path(base_folder).resolve()
    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha if lora_alpha is not None else 2 * r,
        target_modules=target_modules, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        use_rslora=use_rslora, alpha_pattern=alpha_pattern or {}, rank_pattern=rank_pattern or {},
        init_lora_weights=False,
        fan_in_fan_out=model.config.model_type == "gpt2",  # Conv1D stores W transposed
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    if train_steps:
        _sgd_steps(peft_model, str(base_folder), train_steps, seed)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_folder)
    out_folder = Path(out_folder)
    peft_model.save_pretrained(out_folder, safe_serialization=True)
    saved = json.loads((out_folder / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(base_folder), saved["base_model_name_or_path"]
    return out_folder


def _sgd_steps(peft_model, tokenizer_folder: str, steps: int, seed: int) -> None:
    """A few plain SGD steps on corpus text: the adapter drifts the way training moves it."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_folder)
    texts = random.Random(f"sgd/{seed}").sample(_corpus(), 8 * steps)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    peft_model.train()
    for step in range(steps):
        batch = tokenizer(texts[8 * step: 8 * step + 8], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = peft_model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


# --- the user's dataset -----------------------------------------------------------------------

# Map the user's columns onto the project's fields: `FieldMapping(**USER_MAPPING)`.
USER_MAPPING: dict[str, Any] = {
    "prompt": "Question: {question}\nAnswer:",
    "choices": ["option_a", "option_b", "option_c", "option_d"],
    "gold": "answer",
    "gold_format": "letter",
}
USER_COLUMNS = ("id", "question", "option_a", "option_b", "option_c", "option_d", "answer")


def _question_row(rng: random.Random, i: int) -> dict[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:
        fruit = rng.choice(sorted(FRUIT_COLORS))
        question, gold, pool = f"What color is a ripe {fruit}?", FRUIT_COLORS[fruit], COLORS
    elif kind == 1:
        animal = rng.choice(sorted(ANIMAL_SOUNDS))
        question, gold = f"Which sound does a {animal} make?", ANIMAL_SOUNDS[animal]
        pool = tuple(ANIMAL_SOUNDS.values())
    elif kind == 2:
        a, b = rng.randrange(10), rng.randrange(9)
        question, gold = f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", NUMBER_WORDS[a + b]
        pool = NUMBER_WORDS
    elif kind == 3:
        word = rng.choice(sorted(OPPOSITES))
        question, gold, pool = f"What is the opposite of {word}?", OPPOSITES[word], tuple(OPPOSITES.values())
    else:
        country = rng.choice(sorted(CAPITALS))
        question, gold = f"What is the capital city of {country}?", CAPITALS[country]
        pool = tuple(CAPITALS.values())
    options = [gold, *rng.sample([p for p in pool if p != gold], 3)]
    rng.shuffle(options)
    letter = "ABCD"[options.index(gold)]
    return {"id": f"q{i:03d}", "question": question, "option_a": options[0], "option_b": options[1],
            "option_c": options[2], "option_d": options[3], "answer": letter}


def user_rows(n: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """The rows `write_user_dataset` writes (same n and seed, same rows)."""
    rng = random.Random(f"user-dataset/{seed}")
    return [_question_row(rng, i) for i in range(n)]


def write_user_dataset(path: str | Path, n: int = 40, seed: int = 0, fmt: str = "jsonl") -> Path:
    """A multiple-choice file in a user's own schema (question, option_a..d, letter answer):
    the project must read it through a field mapping, not through its own JSONL fields."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = user_rows(n, seed)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=USER_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"fmt must be 'jsonl' or 'csv', not {fmt!r}")
    return path


# --- worlds -----------------------------------------------------------------------------------


def build_user_world(root: str | Path, arch: str = "llama", seed: int = 0) -> dict[str, Any]:
    """A base, a library of four differently configured LoRAs and a user dataset (JSONL+CSV).

    Returns the paths: root, base, adapters_dir, adapters (name -> folder), jsonl, csv.
    """
    root = Path(root).resolve()
    base = root / "base"
    tokenizer = build_bpe_tokenizer(base)
    save_base(build_base(arch, tokenizer, seed), tokenizer, base)
    adapters_dir = root / "adapters"
    qv = qv_targets(_TYPE_OF[arch])
    one_module = _first_linear_name(arch)
    specs: dict[str, dict[str, Any]] = {
        "qv-r4": {"r": 4, "target_modules": qv},
        "all-r8": {"r": 8, "target_modules": "all-linear", "train_steps": 3},
        "all-r16-rslora": {"r": 16, "target_modules": "all-linear", "use_rslora": True},
        "alpha-pattern": {"r": 8, "target_modules": "all-linear", "alpha_pattern": {one_module: 64}},
    }
    adapters = {
        name: make_adapter(base, adapters_dir / name, seed=seed + 1 + i, **spec)
        for i, (name, spec) in enumerate(specs.items())
    }
    data = root / "data"
    return {
        "root": root, "base": base, "adapters_dir": adapters_dir, "adapters": adapters,
        "jsonl": write_user_dataset(data / "user.jsonl", seed=seed, fmt="jsonl"),
        "csv": write_user_dataset(data / "user.csv", seed=seed, fmt="csv"),
    }


# `config.model_type` of each architecture name (they differ only for Gemma 3's text model).
_TYPE_OF = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "gemma3": "gemma3_text",
            "phi3": "phi3", "gpt2": "gpt2", "gpt_neox": "gpt_neox", "olmo2": "olmo2"}


def _first_linear_name(arch: str) -> str:
    """Full module name of layer 0's attention output projection (an alpha_pattern key)."""
    return {"gpt2": "transformer.h.0.attn.c_proj", "gpt_neox": "gpt_neox.layers.0.attention.dense",
            }.get(arch, "model.layers.0.self_attn.o_proj")


def build_arch_world(root: str | Path, arch: str, tokenizer: PreTrainedTokenizerFast,
                     seed: int = 0) -> tuple[Path, list[Path]]:
    """One architecture's base and two adapters: all-linear r=8 and q/v-only r=4."""
    root = Path(root).resolve()
    base = save_base(build_base(arch, tokenizer, seed), tokenizer, root / "base")
    adapters = [
        make_adapter(base, root / "adapters" / f"{arch}-all-r8", r=8, target_modules="all-linear",
                     seed=seed + 1),
        make_adapter(base, root / "adapters" / f"{arch}-qv-r4", r=4,
                     target_modules=qv_targets(_TYPE_OF[arch]), seed=seed + 2),
    ]
    return base, adapters


def build_arch_worlds(root: str | Path, seed: int = 0) -> dict[str, tuple[Path, list[Path]]]:
    """`build_arch_world` for every architecture, sharing one trained tokenizer."""
    root = Path(root).resolve()
    tokenizer = build_bpe_tokenizer(root / "tokenizer")
    # A seed per architecture: same-shaped ones (llama, mistral) must not share weights.
    return {arch: build_arch_world(root / arch, arch, tokenizer, seed + 10 * i)
            for i, arch in enumerate(ARCHITECTURES)}


# --- pytest fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def user_world(tmp_path_factory) -> dict[str, Any]:
    """A Llama base with a BPE tokenizer, four mixed LoRAs and a user-schema dataset (read-only)."""
    return build_user_world(tmp_path_factory.mktemp("user-world"))


@pytest.fixture(scope="session")
def arch_worlds(tmp_path_factory) -> dict[str, tuple[Path, list[Path]]]:
    """arch -> (base folder, [all-linear r=8 adapter, q/v r=4 adapter]) for eight architectures."""
    return build_arch_worlds(tmp_path_factory.mktemp("arch-worlds"))


def rows_of_mixed_lengths(folder: Path, n: int, seed: int, at: int) -> list:
    """The user's file read through their field mapping, plus a very short three-choice prompt
    first and a long one at position `at`+1: rows in a batch differ a lot in length, so left
    padding and length buckets are exercised."""
    from mashup_core.data.examples import MCExample
    from mashup_core.data.targets import FieldMapping, load_file

    rows = load_file(write_user_dataset(Path(folder) / "user.jsonl", n=n, seed=seed),
                     FieldMapping(**USER_MAPPING))
    short = MCExample("Answer:", ("yes", "no", "maybe"), 0)
    long = MCExample(
        "Question: A ripe banana is yellow and a ripe cherry is red. The opposite of hot is cold "
        "and two plus three is five. What is the capital city of Norway?\nAnswer:",
        (" Oslo", " Paris", " Lima", " Rome"), 0)
    return [short, *rows[:at], long, *rows[at:]]
