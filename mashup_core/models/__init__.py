"""Models: loading a base model safely, and the checkpoint library with its one validation."""

from pathlib import Path


def model_folder_problem(path: Path) -> str | None:
    """Why a local folder given as a model is not one (no config.json), else None: said before
    transformers says it its own way. Torch-free, for config checks too."""
    path = Path(path)
    if (path / "config.json").exists():
        return None
    if (path / "adapter_config.json").exists():
        return f"{path} is a LoRA adapter, not a model folder: give its base model instead"
    inside = sorted(p.name for p in path.iterdir())[:6] if path.is_dir() else []
    return (f"{path} is not a model folder: it has no config.json"
            + (f" (it holds {', '.join(inside)})" if inside else " (it is empty)")
            + "; give a folder saved with `save_pretrained` (config.json + *.safetensors) or a Hub id")
