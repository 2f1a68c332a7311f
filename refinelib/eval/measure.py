"""Trained models measured one by one: a first step in a held-in episode (chapter 03), and greedy episodes
on held-out suites with held-out losses (chapter 07's ablation and data-scaling models).

::

    replies, state = measure.first_steps({"refine": "artifacts/tuning/default/refine"}, instance)
    episodes, losses = measure.measure_models({"base": None, "refine": folder}, log_dir, heldout,
                                              suites=["babyai"], instances=1, scale="small", max_steps=3,
                                              max_new_tokens=40, max_prompt_tokens=1024, max_length=1024)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from refinelib.envs import make_instance
from refinelib.envs.base import Instance
from refinelib.eval import agent, evaluate, experiment
from refinelib.eval.episodes import Episode


def first_steps(folders: Mapping[str, str | Path], instance: Instance,
                max_new_tokens: int = 48) -> tuple[list[dict], agent.EpisodeState]:
    """Each trained model (``{name: run folder}``, reloaded from disk: base model + adapter) asked for the
    first step of ``instance`` with the evaluation agent's own prompt; its reply parsed by the agent's
    parser and played in the environment.

    Returns:
        (one row per model: reply, thought, action, whether it was valid, the observation's start; the
        episode state after the last model's step, for its goal and first observation).
    """
    from refinelib.eval.policies import TransformersPolicy
    from refinelib.tune import models

    replies, state = [], None
    for name, folder in folders.items():
        model, tokenizer = models.load(folder)
        policy = TransformersPolicy(model, tokenizer, name=name, max_new_tokens=max_new_tokens)
        state = agent.EpisodeState(make_instance(instance), instance.seed)
        reply = policy.generate([state.prompt()])[0]
        turn = state.advance(reply)
        replies.append({"model": name, "reply": reply, "thought": turn.thought, "action": turn.action,
                        "valid action": turn.valid, "observation": turn.observation[:120]})
    return replies, state


def measure_models(folders: Mapping[str, str | Path | None], log_dir: str | Path,
                   heldout: Sequence[Mapping], *, suites: Sequence[str], instances: int | None, scale: str,
                   max_steps: int, max_new_tokens: int, max_prompt_tokens: int | None,
                   max_length: int | None,
                   base_model: str = "SmolLM2-135M-Instruct") -> tuple[list[Episode], dict[str, dict]]:
    """Play every model of ``{name: folder}`` (None: the base model) greedily on ``instances`` instances of
    each suite, into ``<log_dir>/<name>.jsonl`` (a retrained model or other settings start a new log:
    :func:`refinelib.eval.experiment.fresh_log`), and measure its losses on the ``heldout`` records
    (:func:`refinelib.tune.ablation.heldout_losses`); one model in memory at a time.

    Returns:
        (every model's episodes, in model order; ``{name: losses}``).
    """
    from refinelib.tune.ablation import heldout_losses

    settings = dict(max_steps=max_steps, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                    suites=suites, instances=instances, scale=scale)
    episodes, losses = [], {}
    for name, folder in folders.items():
        log = Path(log_dir) / f"{name}.jsonl"
        identity = experiment.model_identity(folder)
        experiment.fresh_log(log, {"model": folder or base_model, "identity": identity, **settings})
        policy = experiment.load_policy(name, folder, base_model=base_model, max_new_tokens=max_new_tokens,
                                        max_prompt_tokens=max_prompt_tokens)
        episodes += evaluate.run(policy, suites, scale, max_steps=max_steps, max_instances=instances,
                                 log_path=log, progress_bar=False)
        losses[name] = heldout_losses(policy.model, policy.tokenizer, heldout, max_length=max_length)
        policy.close()
    return episodes, losses
