"""Which device a job asks for, and the name of its queue."""

from __future__ import annotations

from mashup_core.errors import MashupError


class DeviceError(MashupError, ValueError):
    """A device asked for that this machine does not have."""


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"field 'device': {name!r} asked for, but no CUDA device is available")
    return device


def device_key(device) -> str:
    """'cpu', 'cuda:0', ...: the name of the device's queue."""
    if device.type == "cuda":
        import torch

        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type
