"""An environment under a perturbation rule (:mod:`refinelib.envs.perturb`): it shows the perturbed commands
(valid actions, ``check valid actions``, the oracle) and maps the agent's text back before the wrapped
environment steps; text in the old format the rule rewrote is rejected, as the paper's Fig. 2b needs.
"""

from __future__ import annotations

from refinelib.envs.base import CHECK_VALID_ACTIONS, Step, TextEnv
from refinelib.envs.perturb import REJECTED, REJECTED_DEFAULT, Rule, TokenRule, get_rule
from refinelib.schema import normalize_action


class PerturbedEnv:
    """``env`` seen through ``rule``: a thin proxy with the :class:`~refinelib.envs.base.TextEnv` interface.

    Valid actions, the ``check valid actions`` listing and the oracle's action are perturbed; the agent's
    text is mapped back before ``env.step``. Text in the old (canonical) format that the rule rewrites is
    refused without reaching the engine: it costs a step and gets the family's "unknown command" answer.
    Text the rule does not know goes to the environment unchanged (and fails as it decides). Everything
    else (``done``, ``progress``, ``family``, ``version``, ...) is the wrapped environment's.
    """

    def __init__(self, env: TextEnv, rule: Rule | TokenRule | str) -> None:
        self.env = env
        self.rule = get_rule(env.family, rule) if isinstance(rule, str) else rule
        if self.rule.family != env.family:
            raise ValueError(f"rule {self.rule.id} is for {self.rule.family}, not {env.family}")

    @property
    def perturbation(self) -> str:
        """The rule's id, e.g. ``"perturb-v1:R1"`` (what episode logs and instructions are keyed on)."""
        return self.rule.id

    def __getattr__(self, name: str):
        return getattr(self.env, name)

    def reset(self, seed: int):
        start = self.env.reset(seed)
        return type(start)(start.goal, start.observation, tuple(self.valid_actions()))

    def valid_actions(self) -> list[str]:
        return sorted({self.rule.forward(a) for a in self.env.valid_actions()})

    def oracle_action(self) -> str | None:
        action = self.env.oracle_action()
        return None if action is None else self.rule.forward(action)

    def step(self, action: str) -> Step:
        text = normalize_action(action)
        if text.lower() == CHECK_VALID_ACTIONS:
            step = self.env.step(CHECK_VALID_ACTIONS)  # the base class's bookkeeping; the list is ours
            return Step("Valid actions: " + ", ".join(self.valid_actions()) + ".", step.valid, step.done,
                        step.success, step.progress)
        canonical = self.rule.inverse(text)
        if canonical is not None:
            return self.env.step(canonical)
        # The old format: spend the step as `check valid actions` does (it changes nothing else).
        step = self.env.step(CHECK_VALID_ACTIONS)
        feedback = REJECTED.get(self.env.family, REJECTED_DEFAULT).format(action=text)
        return Step(feedback, False, step.done, step.success, step.progress)

    def snapshot(self):
        return self.env.snapshot()

    def close(self) -> None:
        self.env.close()

    def __repr__(self) -> str:
        return f"PerturbedEnv({self.env!r}, {self.rule.id})"
