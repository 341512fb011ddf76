"""An adapter bank: many LoRA adapters on one base model, every row of a batch with its own.

Scoring a library runs every adapter over the same rows. PEFT's mixed-adapter batches loop over
the adapters in Python inside every LoRA layer and re-inject them group by group; systems built
for many adapters at once (S-LoRA, arXiv 2311.03285; Punica's SGMV, 2310.18547) keep the
adapters' factors stacked and gather each row's. The bank does that with plain torch:

- per LoRA-targeted layer, the slots' factors stacked once: A as (slots, r, d_in) and B, with
  the adapter's scale folded in, as (slots, d_out, r); ranks below the bank's are zero-padded
  (the padding adds nothing), and a layer an adapter does not target holds zeros in its slot;
- a forward hook on each such layer adds, for every row b, x_b A[s_b]^T B[s_b]^T, with s_b the
  row's slot: two gathered batched matmuls (`torch.bmm`), one set of kernels per layer however
  many adapters the batch mixes; slot 0 is all zeros, the base model's rows;
- loading an adapter copies its factors into a free slot; nothing is injected or re-wrapped, so
  halving's later rounds and the next group cost a copy, not PEFT's injection.

`BankedModel` takes PEFT's mixed-batch call, `model(..., adapter_names=[...])`, and its
`set_adapter`, so the scoring code runs a bank or a PeftModel the same way. What it does not
cover (DoRA, lora_bias, LoRA on embeddings, whole saved modules, other PEFT types, layers
that are not Linear/Conv1D) is refused by `bankable` with the reason: scoring falls back to
PEFT for those.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mashup_core.errors import MashupError

BASE = "__base__"  # PEFT's name for the base model's rows in a mixed batch
_PEFT_PREFIX = "base_model.model."  # PEFT saves a module's factors under this prefix


class BankError(MashupError):
    """An adapter the bank cannot hold; the message says why (scoring then uses PEFT)."""


@dataclass(frozen=True)
class BankAdapter:
    """One adapter's factors, by the base model's module names; B carries the scale."""

    name: str
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A: r×in, scale·B: out×r)

    @property
    def rank(self) -> int:
        return max(a.shape[0] for a, _ in self.factors.values())


def read_bank_adapter(path: str | Path, name: str | None = None) -> BankAdapter:
    """A PEFT LoRA adapter folder as bank factors (rsLoRA, alpha and rank patterns applied), or
    `BankError` when it holds what the bank does not compute."""
    from mashup_core.models.adapters import AdapterFileError, read_lora_adapter

    path = Path(path)
    try:
        adapter = read_lora_adapter(path)
    except AdapterFileError as exc:  # lora_bias, DoRA, embeddings, trainable tokens: named there
        raise BankError(str(exc)) from exc
    config = adapter.config
    if str(config.get("peft_type", "LORA")).upper() != "LORA" or config.get("use_dora"):
        raise BankError(f"{path.name}: {'DoRA' if config.get('use_dora') else config.get('peft_type')}"
                        " adapters are scored with PEFT")
    if adapter.saved:
        raise BankError(f"{path.name}: saves whole modules ({', '.join(sorted(adapter.saved)[:2])}),"
                        " which the bank does not swap; scored with PEFT")
    factors = {key.removeprefix(_PEFT_PREFIX): (f.A, f.B * f.scale) for key, f in adapter.modules.items()}
    return BankAdapter(name or path.name, factors)


def bankable(model: nn.Module, adapter: BankAdapter) -> str | None:
    """None if every module the adapter targets is a layer the bank can hook (Linear, or
    GPT-2's Conv1D) of the right shape; else why not."""
    modules = dict(model.named_modules())
    for name, (a, b) in adapter.factors.items():
        layer = modules.get(name)
        if layer is None:
            return f"{adapter.name}: the base model has no module {name}"
        shape = _in_out(layer)
        if shape is None:
            return f"{adapter.name}: {name} is a {type(layer).__name__}, not a linear layer"
        if shape != (a.shape[1], b.shape[0]):
            return (f"{adapter.name}: {name} is {shape[1]}x{shape[0]} in the base but the adapter's "
                    f"update is {b.shape[0]}x{a.shape[1]}: another base model")
    return None


def _in_out(layer: nn.Module) -> tuple[int, int] | None:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if type(layer).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight is (in, out)
        return tuple(layer.weight.shape)  # type: ignore[return-value]
    return None


class _Stack:
    """One layer's slots: A (S, r, in) and B (S, out, r), grown in rank when an adapter needs."""

    def __init__(self, slots: int, rank: int, d_in: int, d_out: int, dtype, device):
        self.A = torch.zeros(slots, rank, d_in, dtype=dtype, device=device)
        self.B = torch.zeros(slots, d_out, rank, dtype=dtype, device=device)

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def grow(self, rank: int) -> None:
        """Zero-pad every slot to `rank` (padding adds nothing to any row's update)."""
        extra = rank - self.rank
        self.A = torch.cat([self.A, self.A.new_zeros(self.A.shape[0], extra, self.A.shape[2])], 1)
        self.B = torch.cat([self.B, self.B.new_zeros(self.B.shape[0], self.B.shape[1], extra)], 2)

    def put(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None:
            self.A[slot, : a.shape[0]] = a
            self.B[slot, :, : a.shape[0]] = b

    def delta(self, x: torch.Tensor, rows: torch.Tensor | int) -> torch.Tensor:
        """x (batch, ..., in) -> each row's x A[slot]^T B[slot]^T, (batch, ..., out)."""
        if isinstance(rows, int):  # one slot for the whole batch: two plain matmuls
            return (x @ self.A[rows].T) @ self.B[rows].T
        flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, tokens, in)
        low = torch.bmm(flat, self.A.index_select(0, rows).transpose(1, 2))
        out = torch.bmm(low, self.B.index_select(0, rows).transpose(1, 2))
        return out.reshape(*x.shape[:-1], out.shape[-1])


class BankedModel(nn.Module):
    """A base model with an adapter bank: `slots` adapters held at once (slot 0 is the base).

    `load(adapter)` copies an adapter into a free slot; `unload(name)` frees it. A forward
    takes PEFT's `adapter_names=[one per row]` ("__base__" for the base model), or runs the
    active adapter (`set_adapter`) on every row. `close()` removes the hooks: the bare base.
    """

    def __init__(self, base: nn.Module, slots: int):
        super().__init__()
        if slots < 1:
            raise BankError(f"a bank needs at least one slot (got {slots})")
        self.base = base
        self.slots = slots
        self._stacks: dict[str, _Stack] = {}
        self._hooks: list = []
        self._slot_of: dict[str, int] = {}  # adapter name -> slot (1..slots)
        self._layers = dict(base.named_modules())
        self._rows: torch.Tensor | int = 0
        self._active = BASE
        param = next(base.parameters())
        self._dtype, self._device = param.dtype, param.device

    # --- PEFT's surface, as scoring uses it -----------------------------------------------

    def get_base_model(self) -> nn.Module:
        return self.base

    @property
    def config(self):
        return self.base.config

    @property
    def active_adapter(self) -> str:
        return self._active

    def set_adapter(self, name: str) -> None:
        if name != BASE and name not in self._slot_of:
            raise BankError(f"no adapter {name!r} in the bank (loaded: {', '.join(self._slot_of)})")
        self._active = name

    def forward(self, *args, adapter_names: Sequence[str] | None = None, **kwargs):
        if adapter_names is None:
            self._rows = self._slot(self._active)
        else:
            slots = [self._slot(n) for n in adapter_names]
            self._rows = slots[0] if len(set(slots)) == 1 else torch.tensor(slots, device=self._device)
        try:
            return self.base(*args, **kwargs)
        finally:
            self._rows = 0

    # --- slots ----------------------------------------------------------------------------

    @property
    def loaded(self) -> list[str]:
        return list(self._slot_of)

    def free_slots(self) -> int:
        return self.slots - len(self._slot_of)

    def load(self, adapter: BankAdapter) -> int:
        """Copy `adapter` into a free slot (its layers hooked on first use); returns the slot."""
        if adapter.name in self._slot_of:
            raise BankError(f"an adapter named {adapter.name!r} is in the bank already")
        if (why := bankable(self.base, adapter)) is not None:
            raise BankError(why)
        taken = set(self._slot_of.values())
        slot = next((s for s in range(1, self.slots + 1) if s not in taken), None)
        if slot is None:
            raise BankError(f"the bank's {self.slots} slots are full; unload an adapter first")
        for name, (a, b) in adapter.factors.items():
            stack = self._stacks.get(name) or self._add_layer(name, a.shape[0])
            if a.shape[0] > stack.rank:
                stack.grow(a.shape[0])
            stack.put(slot, a.to(self._dtype), b.to(self._dtype))
        for name, stack in self._stacks.items():  # layers this adapter does not touch: zeros
            if name not in adapter.factors:
                stack.put(slot, None, None)
        self._slot_of[adapter.name] = slot
        return slot

    def unload(self, name: str) -> None:
        self._slot_of.pop(name, None)
        if self._active == name:
            self._active = BASE

    def close(self) -> nn.Module:
        """Remove every hook and free the bank: the base model as it was."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._stacks.clear()
        self._slot_of.clear()
        return self.base

    def nbytes(self) -> int:
        """The bank's own memory (its stacked factors), whatever the library's size."""
        return sum(s.A.numel() * s.A.element_size() + s.B.numel() * s.B.element_size()
                   for s in self._stacks.values())

    def _slot(self, name: str) -> int:
        if name == BASE:
            return 0
        try:
            return self._slot_of[name]
        except KeyError:
            raise BankError(f"no adapter {name!r} in the bank") from None

    def _add_layer(self, name: str, rank: int) -> _Stack:
        layer = self._layers[name]
        d_in, d_out = _in_out(layer)
        stack = _Stack(self.slots + 1, rank, d_in, d_out, self._dtype, self._device)
        self._stacks[name] = stack

        def add_update(module, inputs, output):
            return output + stack.delta(inputs[0], self._rows)

        self._hooks.append(layer.register_forward_hook(add_update))
        return stack


def slots_for(model: nn.Module, adapters: Iterable[BankAdapter], budget_bytes: int) -> int:
    """How many slots of these adapters' layers fit in `budget_bytes` (at least one)."""
    adapters = list(adapters)
    if not adapters:
        return 1
    modules = dict(model.named_modules())
    rank = max(a.rank for a in adapters)
    layers = {name for a in adapters for name in a.factors}
    element = next(model.parameters()).element_size()
    per_slot = sum(rank * sum(_in_out(modules[name]) or (0, 0)) for name in layers) * element
    return max(1, budget_bytes // max(per_slot, 1) - 1)
