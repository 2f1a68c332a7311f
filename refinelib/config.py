"""The episode settings the evaluation chapters share: ``configs/<profile>/episodes.yaml``, one per profile.

Chapters 01, 04 and 05 play into the same episode log per model (:mod:`refinelib.eval.experiment`), so
they must play with the same suite scale, step limit and generation settings; chapters 06 and 07 use them
too when their ``shared_episodes`` parameter says so. Those settings live here, once::

    from refinelib import config
    settings = config.load_episode_settings("cpu-long")        # configs/cpu-long/episodes.yaml
    settings.max_steps, settings.evaluation("SmolLM2-135M-Instruct")["max_instances"]

A profile without the file plays with the defaults below (those of the default book); a key the file
does not know is refused, naming the file and the key. The runner (:mod:`refinelib.report.runbook`) gives
each chapter its ``profile``; a chapter's ``episode_overrides`` parameter and its smoke mode change
settings on top of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from refinelib import options

CONFIGS = Path("configs")  # where the runner and the chapters find the profiles (the repository root's)
EPISODES_FILE = "episodes.yaml"
DEFAULT_PROFILE = "default"  # the default book: needs no folder under configs/
SCALES = ("small", "agentboard")


@dataclass(frozen=True)
class EpisodeSettings:
    """How the evaluation chapters play their episodes (the defaults are the default book's)."""

    scale: str = field(default="agentboard", metadata={
        "help": "suite sizes: 'small' (a few instances each) or 'agentboard' (AgentBoard's counts)"})
    max_instances: int = field(default=20, metadata={
        "help": "instances per suite in chapters 01 and 04 (0: all): 20 pairs per suite, the power "
                "calculation's size (docs/experiment_design.md)"})
    robustness_instances: int = field(default=4, metadata={
        "help": "instances per suite and setting in chapter 05 (0: all); claim (d) needs ~60. The selection "
                "is prefix-stable, so up to max_instances its original-prompt episodes are 01/04's"})
    max_steps: int = field(default=15, metadata={
        "help": "steps per episode (AgentBoard: 30): the searching expert's median game + room to recover"})
    max_new_tokens: int = field(default=48, metadata={
        "help": "cap per model output (a Thought + Action line fits)"})
    max_prompt_tokens: int = field(default=1280, metadata={
        "help": "history window of the prompt (the system prompt alone is ~500-700 tokens)"})
    batch_size: int = field(default=20, metadata={"help": "episodes in lock-step"})

    def __post_init__(self) -> None:
        # every way of making settings (a file, overrides, flags, the constructor) is checked here, once
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        for f in fields(self):
            value, low = getattr(self, f.name), 0 if f.name.endswith("instances") else 1
            if f.name != "scale" and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{f.name} must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping, source: str) -> EpisodeSettings:
        """Settings from ``values`` (missing keys: the defaults), checked; errors name ``source``.

        Raises:
            ValueError: an unknown key, or a value of the wrong type or range.
        """
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ValueError(f"{source}: unknown episode setting {unknown[0]!r}; the settings are: "
                             f"{', '.join(known)}")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def with_overrides(self, overrides: Mapping | None, source: str = "episode_overrides") -> EpisodeSettings:
        """These settings with ``overrides`` applied (checked like a file's)."""
        if not overrides:
            return self
        return EpisodeSettings.from_mapping({**asdict(self), **overrides}, source)

    def smoke(self) -> EpisodeSettings:
        """The smoke runs' settings: one instance, one step, short outputs (CI checks the code paths)."""
        return replace(self, max_instances=1, robustness_instances=1, max_steps=1, max_new_tokens=16)

    def evaluation(self, base_model: str, instances: int | None = None) -> dict:
        """The keyword arguments of :func:`refinelib.eval.experiment.evaluate_models` (and the ``settings``
        a chapter's manifest records): ``instances`` in place of ``max_instances`` when given, 0 as None
        (every instance)."""
        count = self.max_instances if instances is None else instances
        return dict(scale=self.scale, max_instances=count or None, max_steps=self.max_steps,
                    max_new_tokens=self.max_new_tokens, max_prompt_tokens=self.max_prompt_tokens,
                    batch_size=self.batch_size, base_model=base_model)


def episodes_file(profile: str = DEFAULT_PROFILE, configs: str | Path = CONFIGS) -> Path:
    """The file that holds ``profile``'s episode settings: ``configs/<profile>/episodes.yaml``."""
    return Path(configs) / profile / EPISODES_FILE


def load_episode_settings(profile: str = DEFAULT_PROFILE, overrides: Mapping | None = None,
                          smoke: bool = False, configs: str | Path = CONFIGS) -> EpisodeSettings:
    """``profile``'s episode settings (its ``episodes.yaml``; without one, the defaults), then
    ``overrides``, then the smoke settings when ``smoke``.

    Raises:
        ValueError: an unknown profile (no folder under ``configs``, except ``default``), a file that is
            not a mapping, an unknown key or a bad value (naming the file and the key).
    """
    path = episodes_file(profile, configs)
    if profile != DEFAULT_PROFILE and not path.parent.is_dir():
        raise ValueError(f"unknown profile {profile!r}: no folder {path.parent}")
    values = options.read_mapping(path, "episode settings") if path.is_file() else {}
    settings = EpisodeSettings.from_mapping(values, str(path)).with_overrides(overrides)
    return settings.smoke() if smoke else settings
