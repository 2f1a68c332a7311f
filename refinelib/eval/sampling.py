"""Best-of-N (method.md §13): every instance played once greedily and N times with temperature sampling.

::

    greedy, sampled = sampling.best_of_n({"refine": "artifacts/tuning/default/refine"}, ["babyai"],
                                         "artifacts/diversity/default/episodes", n_samples=4)
    table = tables.best_of_n_table(metrics.episode_table(greedy), metrics.episode_table(sampled))

Each model's greedy and sampled episodes go to their own logs, ``<log_dir>/<name>-greedy.jsonl`` and
``<name>-sampled.jsonl``, whose identity is the model (its folder and training), the episode settings and
the sampling settings: a re-run with the same ones reads the episodes back, another one sets the old logs
aside (:func:`refinelib.eval.experiment.fresh_log`). Each sample is seeded by the run seed, the sample
index, the instance and the step, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from refinelib.eval import evaluate, experiment
from refinelib.eval.episodes import Episode
from refinelib.eval.policies import Policy

KINDS = ("greedy", "sampled")


def log_paths(log_dir: str | Path, name: str) -> dict[str, Path]:
    """Model ``name``'s two Best-of-N logs: ``{"greedy": <log_dir>/<name>-greedy.jsonl, "sampled": ...}``."""
    return {kind: Path(log_dir) / f"{name}-{kind}.jsonl" for kind in KINDS}


def best_of_n(models: Mapping[str, str | Mapping | None], suites: Sequence[str], log_dir: str | Path, *,
              n_samples: int = 4, temperature: float = 0.7, top_p: float = 1.0, seed: int = 0,
              scale: str = "small", instances: int | None = 1, max_steps: int = 3, max_new_tokens: int = 40,
              max_prompt_tokens: int | None = 1024, batch_size: int = 16,
              base_model: str = "SmolLM2-135M-Instruct", policies: Mapping[str, Policy] | None = None,
              progress_bar: bool = True) -> tuple[list[Episode], list[Episode]]:
    """Play every model of ``{name: entry}`` (:func:`refinelib.eval.experiment.load_policy`) greedily and
    ``n_samples`` times at ``temperature`` / ``top_p`` on ``instances`` instances of each suite.

    ``policies`` holds models already loaded (by name), used instead of loading them again.

    Returns:
        (the greedy episodes, the sampled episodes) of every model, in model order.
    """
    greedy, sampled = [], []
    run = dict(scale=scale, max_steps=max_steps, max_instances=instances, batch_size=batch_size,
               seeds=(seed,), progress_bar=progress_bar)
    for name, entry in models.items():
        settings = {"model": experiment.describe(entry), "model_identity": experiment.model_identity(entry),
                    "max_steps": max_steps, "max_new_tokens": max_new_tokens,
                    "max_prompt_tokens": max_prompt_tokens, "scale": scale,
                    "temperature": temperature, "top_p": top_p, "seed": seed}
        if entry is None:  # the untuned model: which one
            settings["base_model"] = base_model
        paths = log_paths(log_dir, name)
        for path in paths.values():
            experiment.fresh_log(path, settings)
        policy = (policies or {}).get(name) or experiment.load_policy(
            name, entry, base_model=base_model, max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens)
        policy.name = name
        policy.temperature = 0.0
        greedy += evaluate.run(policy, suites, log_path=paths["greedy"], **run)
        policy.temperature, policy.top_p = temperature, top_p
        sampled += evaluate.run(policy, suites, samples=n_samples, log_path=paths["sampled"], **run)
        policy.close()
    return greedy, sampled
