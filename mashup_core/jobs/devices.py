"""Where a job runs: the device it asks for and the name of its queue; the Ray it starts."""

from __future__ import annotations

import os

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


def ray_address(address: str | None) -> str | None:
    """The Ray cluster a job is pointed at: `address`, else $RAY_ADDRESS; None: a Ray of its own."""
    return address or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None, num_cpus: int) -> None:
    """Connect to the cluster at `address`, or start a Ray of our own with `num_cpus` ("local":
    left to itself, ray.init joins any `ray start` cluster on this machine, then refuses the
    num_cpus a cluster sets for itself)."""
    import ray

    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True, **({} if address else {"num_cpus": num_cpus}))
