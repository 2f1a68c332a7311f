"""What the diversity chapter (06) reads from earlier chapters, checked, or tiny stand-ins in smoke mode.

Outside smoke mode every input comes from an earlier chapter: the shared episode logs (04), the tuned
models (03), the synthesis run and its expert dataset (02); a missing one raises one error naming every
missing file and the chapter that writes it. In smoke mode :func:`smoke_diversity_inputs` makes them: the
base model's and the two reference policies' episodes, a few grounded synthesis samples and a few expert
episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from refinelib import paths
from refinelib.eval import evaluate, experiment, sampling
from refinelib.eval.episodes import Episode, EpisodeLog
from refinelib.eval.policies import Policy


@dataclass
class DiversityInputs:
    """The episodes whose thoughts are compared, the synthesis run, the expert data and the Best-of-N
    models (with any policy already loaded for them)."""

    models: list[str]                       # whose logged thoughts are compared
    logged: list[Episode]                   # their original-prompt, first-sample episodes
    synthesis: object                       # a refinelib.synth.synthesis.SynthesisRun
    expert_records: list[dict]
    expert_meta: dict[str, dict]
    bon_models: dict[str, str | Mapping | None]   # Best-of-N: {name: model entry}
    policies: dict[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logged = [e for e in self.logged if e.perturbation == evaluate.ORIGINAL and e.sample == 0]

    def summary(self) -> pd.DataFrame:
        """Episodes and steps per compared model."""
        return pd.DataFrame([{"model": m, "episodes": sum(e.policy == m for e in self.logged),
                              "steps": sum(len(e.turns) for e in self.logged if e.policy == m)}
                             for m in self.models])


def missing_inputs(models: Sequence[str], eval_run_id: str, data_run_id: str,
                   bon_models: Mapping[str, str | Mapping | None]) -> list[str]:
    """Every input of the diversity chapter that is not there, each with the chapter that writes it."""
    logs = [paths.episode_log(eval_run_id, m) for m in models]
    missing = [f"{p} (notebook 04_generalization)" for p in logs if not p.is_file()]
    missing += [f"{f} (notebook 03_refinement_tuning)" for f in bon_models.values()
                if f is not None and not experiment.is_endpoint(f) and not Path(f).is_dir()]
    for path in (paths.samples_dir(data_run_id) / "config.json",
                 paths.dataset_dir(data_run_id, "expert") / "hf"):
        if not path.exists():
            missing.append(f"{path} (notebook 02_refinement_synthesis)")
    return missing


def diversity_inputs(models: Sequence[str], eval_run_id: str, data_run_id: str,
                     bon_models: Mapping[str, str | Mapping | None]) -> DiversityInputs:
    """The earlier chapters' outputs (see the module docstring).

    Raises:
        FileNotFoundError: naming every missing input and the chapter to run.
    """
    from refinelib.data.dataset import load_hf
    from refinelib.synth.synthesis import load_run

    missing = missing_inputs(models, eval_run_id, data_run_id, bon_models)
    if missing:
        raise FileNotFoundError("missing inputs; run the named notebooks first (or pass other run ids): "
                                + "; ".join(missing))
    logged = [e for name in models for e in EpisodeLog(paths.episode_log(eval_run_id, name)).read()]
    expert_hf = load_hf(paths.dataset_dir(data_run_id, "expert"))
    rows = [row for split in ("train", "validation") for row in expert_hf[split]]
    return DiversityInputs(list(models), logged, load_run(paths.samples_dir(data_run_id)),
                           [{"id": r["id"], "conversations": r["conversations"]} for r in rows],
                           {r["id"]: {"theme": r["theme"]} for r in rows}, dict(bon_models))


def smoke_diversity_inputs(folder: str | Path, bon_log_dir: str | Path, suites: Sequence[str], *, scale: str,
                           max_steps: int, instances: int, seed: int, base_model: str, max_new_tokens: int,
                           max_prompt_tokens: int | None) -> DiversityInputs:
    """Tiny inputs made in ``folder``: the base model's, the oracle's and the random policy's episodes on
    ``suites`` (the base model's into its Best-of-N greedy log in ``bon_log_dir``, which Best-of-N then
    reads back), four grounded synthesis samples and two expert episodes; the base model is the only
    Best-of-N model (already loaded)."""
    from refinelib.eval.expert import expert_data
    from refinelib.eval.policies import OraclePolicy, RandomPolicy, TransformersPolicy
    from refinelib.synth.synthesis import SynthesisConfig, load_run, synthesize

    folder = Path(folder)
    base = TransformersPolicy.load(base_model, name="base", max_new_tokens=max_new_tokens,
                                   max_prompt_tokens=max_prompt_tokens)
    logged = []
    for policy in (base, OraclePolicy(), RandomPolicy()):
        log = (sampling.log_paths(bon_log_dir, "base")["greedy"] if policy is base
               else folder / "episodes" / f"{policy.name}.jsonl")
        logged += evaluate.run(policy, suites, scale, max_steps=max_steps, max_instances=instances,
                               seeds=(seed,), progress_bar=False, log_path=log)
    synthesize(SynthesisConfig(n=4, seed=seed), folder / "samples", progress=False)
    expert_records, expert_meta = expert_data(2, folder / "expert_episodes.jsonl", progress=False)
    return DiversityInputs(["base", "oracle", "random"], logged, load_run(folder / "samples"), expert_records,
                           expert_meta, {"base": None}, {"base": base})
