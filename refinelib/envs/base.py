"""The text-environment interface every family implements.

An environment is bound to one *task* (a level, a task type, a domain) when it is made, and
``reset(seed)`` picks the instance. The base class owns what must behave the same everywhere:
the special ``check valid actions`` action, sorted valid actions, max-tracked progress, and the
episode bookkeeping. A family implements five small hooks (``_reset``, ``_step``,
``_valid_actions``, ``oracle_action`` and optionally ``snapshot``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from refinelib.schema import normalize_action

CHECK_VALID_ACTIONS = "check valid actions"


class BackendMissing(RuntimeError):
    """An optional backend (a package, Java) is not installed; the message says what to install."""


def require(module: str, family: str, what: str) -> Any:
    """Import ``module`` for ``family`` or raise one clear :class:`BackendMissing`.

    Args:
        module: the module to import, e.g. ``"scienceworld"``.
        family: the environment family that needs it.
        what: what to install, in words (shown to the user).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # also covers a broken native build inside the package
        raise BackendMissing(
            f"The '{family}' environment needs {what} (importing '{module}' failed: {exc}). "
            "Install the environment extras with: pip install -e '.[envs]'"
        ) from None


def check_known(family: str, what: str, values, known) -> None:
    """Raise one ValueError naming the unknown ``values`` (a scale, tasks) and listing the known ones."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"unknown {family} {what} {unknown}; known: {', '.join(map(str, known))}")


@dataclass(frozen=True)
class Reset:
    """What an agent sees at the start of an episode."""

    goal: str
    observation: str
    valid_actions: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """The result of one action.

    ``valid`` is False when the environment rejected the action; ``observation`` then holds the
    environment's own feedback and the state is unchanged. ``progress`` is the episode's
    progress rate so far (max over the episode, in [0, 1]).
    """

    observation: str
    valid: bool
    done: bool
    success: bool
    progress: float


@dataclass
class Outcome:
    """What a family's ``_step`` hook reports; the base class turns it into a :class:`Step`."""

    observation: str
    valid: bool
    won: bool = False
    lost: bool = False
    progress: float | None = None  # current progress; None means "unchanged"


class TextEnv(ABC):
    """One task of a family; ``reset(seed)`` starts an episode, ``step(text)`` plays it."""

    family: ClassVar[str]
    version: ClassVar[str]  # bump when text, actions or progress change
    OPTIONS: ClassVar[tuple[str, ...]] = ()  # the keyword options the family understands

    def __init__(self, task: str, **options: Any) -> None:
        # an unknown option (a typo) would otherwise be ignored and the instance silently not the one asked
        check_known(self.family, "options", sorted(options), self.OPTIONS)
        self.task = task
        self.options = options
        self.seed: int | None = None
        self.goal = ""
        self.steps = 0
        self.progress = 0.0
        self.done = False
        self.success = False

    # ----- the public interface -------------------------------------------------------
    def reset(self, seed: int) -> Reset:
        """Start the instance picked by ``seed``; the same seed gives the same episode."""
        self.seed = int(seed)
        self.goal, observation = self._reset(self.seed)
        self.steps, self.progress, self.done, self.success = 0, 0.0, False, False
        self.progress = _clip(self._initial_progress())
        return Reset(self.goal, observation, tuple(self.valid_actions()))

    def valid_actions(self) -> list[str]:
        """The actions valid now, sorted (AgentBoard's set order moved its progress rates)."""
        return sorted(set(self._valid_actions()))

    def step(self, action: str) -> Step:
        """Play one action given as text; ``check valid actions`` lists them (and costs a step)."""
        if self.seed is None:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset(seed)")
        if self.done:
            raise RuntimeError(f"{type(self).__name__}: the episode is over; call reset(seed)")
        self.steps += 1
        action = normalize_action(action)
        if action.lower() == CHECK_VALID_ACTIONS:
            text = "Valid actions: " + ", ".join(self.valid_actions()) + "."
            return Step(text, True, False, False, self.progress)
        out = self._step(action)
        if out.progress is not None:
            self.progress = max(self.progress, _clip(out.progress))
        if out.won:
            self.progress, self.success = 1.0, True
        self.done = out.won or out.lost
        return Step(out.observation, out.valid, self.done, self.success, self.progress)

    @abstractmethod
    def oracle_action(self) -> str | None:
        """The expert's next action from the current state (None when there is none)."""

    def snapshot(self) -> Any:
        """A comparable picture of the state (tests use it: invalid actions must not change it)."""
        return tuple(self.valid_actions())

    def close(self) -> None:
        """Release backend resources (a JVM, files); the default holds none."""
        return None

    # ----- hooks for families --------------------------------------------------------
    @abstractmethod
    def _reset(self, seed: int) -> tuple[str, str]:
        """Set up the instance; return (goal, first observation)."""

    @abstractmethod
    def _step(self, action: str) -> Outcome:
        """Apply a normalised action; leave the state unchanged when it is invalid."""

    @abstractmethod
    def _valid_actions(self) -> list[str]:
        """The actions valid in the current state, in any order."""

    def _initial_progress(self) -> float:
        """Progress at reset; most families start at 0."""
        return 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, seed={self.seed}, v{self.version})"


@dataclass(frozen=True)
class Instance:
    """One evaluation instance: family, task, seed and options make it fully reproducible."""

    family: str
    task: str
    seed: int
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("family", "task"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Instance.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"Instance.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.options, tuple) or not all(
                isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) for o in self.options):
            raise ValueError(f"Instance.options must be a tuple of (name, value) pairs, got {self.options!r}")
        names = [k for k, _ in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"Instance.options names an option twice: {names}")

    @property
    def id(self) -> str:
        extra = "".join(f",{k}={v}" for k, v in self.options)
        return f"{self.family}/{self.task}{extra}/{self.seed}"


def _clip(x: float) -> float:
    return min(1.0, max(0.0, float(x)))
