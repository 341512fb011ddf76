"""What a built demo world teaches, read from its own measurements (its transfer matrix)."""

from __future__ import annotations

from dataclasses import dataclass

from mashup_core.data.targets import load_demo_task as load_split  # noqa: F401  (re-exported)
from mashup_core.workspace import Workspace

STORY_MARGIN = 0.2  # a donor "transfers" when it beats the base on the target by this much


@dataclass(frozen=True)
class Transfer:
    """One measured donor → target relation of the built world (validation accuracy)."""

    donor: str
    target: str
    donor_acc: float
    base_acc: float

    @property
    def gain(self) -> float:
        return self.donor_acc - self.base_acc

    def sentence(self) -> str:
        return (f"{self.donor} → {self.target}: the {self.donor} adapter answers "
                f"{self.donor_acc:.0%} of {self.target} vs {self.base_acc:.0%} for the base model")


@dataclass(frozen=True)
class TransferStory:
    """What this world's library actually teaches, measured by its build, never assumed.

    Worlds trained on different CPUs differ in the last bits and so in which donors transfer;
    captions, the default target and world-dependent tests read this instead of a fixed story.
    """

    best: dict[str, Transfer]  # target -> its best donor among the other tasks' adapters
    harmful: dict[str, Transfer]  # target -> its worst donor, when it is below the base

    @property
    def transfers(self) -> list[Transfer]:
        """Donors that beat the base by STORY_MARGIN, clearest first."""
        found = [t for t in self.best.values() if t.gain >= STORY_MARGIN]
        return sorted(found, key=lambda t: (-t.gain, t.target))

    @property
    def default_target(self) -> str | None:
        """The target whose best donor helps most: the demo's clearest story."""
        return self.transfers[0].target if self.transfers else None


def transfer_story(base_accuracy: dict[str, float],
                   cross_accuracy: dict[str, dict[str, float]]) -> TransferStory:
    """The best and worst donor per target from a transfer matrix (adapter -> task -> acc)."""
    best, harmful = {}, {}
    for target, base_acc in sorted(base_accuracy.items()):
        # best first; ties go to the first name, so the story is a function of the numbers
        donors = sorted(((-accs[target], donor) for donor, accs in cross_accuracy.items()
                         if donor != target and target in accs))
        if not donors:
            continue
        best[target] = Transfer(donors[0][1], target, -donors[0][0], base_acc)
        low, worst = min((-acc, donor) for acc, donor in donors)
        if low < base_acc:
            harmful[target] = Transfer(worst, target, low, base_acc)
    return TransferStory(best, harmful)


def world_story(ws: Workspace) -> TransferStory | None:
    """The built world's measured story, or None without a complete world."""
    manifest = ws.manifest()
    if manifest is None:
        return None
    report = manifest["report"]
    return transfer_story(report["base_accuracy"], report["cross_accuracy"])
