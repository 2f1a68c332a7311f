"""The book's evaluation experiments: models by name, shared episode logs, the main table, failure modes.

Notebooks 01 (overfitting), 04 (generalisation) and 05 (robustness) evaluate the same models on the
same suites; they share one episode log per model, ``artifacts/evaluation/<eval_run_id>/episodes/
<name>.jsonl``, so an episode one notebook played is read back, not replayed, by the others::

    from refinelib import experiment
    models = experiment.default_models("default")    # base, expert_only, refine (notebook 03's folders)
    episodes = experiment.evaluate_models(models, ["household_held_in", "pddl"], eval_run_id="default")
    table = experiment.main_table(metrics.episode_table(episodes))

Episodes are keyed by (policy, suite, instance, seed, perturbation, sample) only, so what changes an
episode (model folder and training, step limit, generation settings, and the suite, prompt and
environment-code versions: :func:`refinelib.evaluate.log_identity`) is the log's identity, written next
to it in ``<name>.settings.json``; asking for another identity under the same ``eval_run_id`` sets the old
log aside (with a warning naming what changed) and plays the episodes again, never a silent mix.

:func:`failure_modes` finds the paper's Figure-2 failures in any episode log: the **memorised format**
(household commands on another family, or the old command format under a household perturbation) and
the **repeated failed action** (the same rejected action 3+ times). :func:`paper_main_table` and
:func:`paper_robustness_table` hold the paper's reference numbers (method.md §15.1, §15.3), labelled as
the paper's in ``DataFrame.attrs["source"]``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from refinelib import evaluate, runs
from refinelib.envs import registry
from refinelib.episodes import Episode, EpisodeLog
from refinelib.llm import redact_url
from refinelib.metrics import KEY_COLUMNS, normalized_action, summarize
from refinelib.paths import artifacts_dir
from refinelib.perturb import get_rule
from refinelib.taxonomy import classify_steps

BASELINES = ("oracle", "random")  # policies that need no model folder (value "oracle" / "random")
MEMORISING = ("expert_only",)  # models trained on the held-in suites' environment (household)
# Our suites -> the paper's task they stand in for (environments.md).
PAPER_TASK = {"household_held_in": "ALFWorld", "household_held_out": "ALFWorld", "babyai": "BabyAI",
              "sciworld": "SciWorld", "pddl": "PDDL", "textadventure": "Jericho"}
MEMORISED_FORMAT = "memorised format"
REPEATED_FAILED_ACTION = "repeated failed action"
MIN_REPEATS = 3  # "the same failed action >= 3 times" (method.md §11 diagnostics)


# ----- models and shared logs ------------------------------------------------------------------------
def default_models(tuning_run_id: str = "default",
                   names: Sequence[str] = ("base", "expert_only", "refine")) -> dict[str, str | None]:
    """``{name: folder}`` for the base model (None) and notebook 03's models under
    ``artifacts/tuning/<tuning_run_id>/<name>``."""
    root = artifacts_dir("tuning") / tuning_run_id
    return {n: None if n == "base" else str(root / n) for n in names}


ENDPOINT_FIELDS = {"endpoint", "model", "api_key_env"}  # a model served behind an OpenAI-compatible API


def is_endpoint(entry) -> bool:
    """Whether a model entry is an endpoint, e.g. ``{"endpoint": "openai", "model": "gpt-4o-mini"}`` or
    ``{"endpoint": "http://localhost:8000/v1", "model": "refine"}`` (vLLM serving a tuned model)."""
    return isinstance(entry, Mapping)


def check_endpoint(name: str, entry: Mapping) -> None:
    """One ValueError naming the model and the field when an endpoint entry is malformed or its key
    is not in the environment (checked before any model is loaded or any episode played)."""
    unknown = sorted(set(entry) - ENDPOINT_FIELDS)
    if unknown:
        raise ValueError(f"model {name!r}: unknown endpoint fields {unknown}; "
                         f"known: {sorted(ENDPOINT_FIELDS)}")
    for key in ("endpoint", "model"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ValueError(f"model {name!r}: endpoint field {key!r} must be a non-empty string")
    if entry["endpoint"] != "openai" and not entry["endpoint"].startswith(("http://", "https://")):
        raise ValueError(f"model {name!r}: endpoint must be 'openai' or an http(s):// URL, "
                         f"got {redact_url(entry['endpoint'])!r}")
    key_env = entry.get("api_key_env", "OPENAI_API_KEY")
    if not os.environ.get(key_env):  # the key comes from the environment only, never from the entry
        raise ValueError(f"model {name!r}: set its API key in the environment variable {key_env}")


def describe(entry):
    """A model entry as it may be stored (logs, sidecars, manifests): an endpoint's URL without
    credentials; folders and baselines as they are."""
    if is_endpoint(entry):
        return {**entry, "endpoint": redact_url(entry.get("endpoint"))}
    return entry


def check_models(models: Mapping[str, str | Mapping | None]) -> None:
    """Raise one error naming every model folder that is missing (run notebook 03 first) or the first
    malformed endpoint entry."""
    for name, entry in models.items():
        if is_endpoint(entry):
            check_endpoint(name, entry)
    missing = {n: f for n, f in models.items()
               if f is not None and not is_endpoint(f) and f not in BASELINES and not Path(f).is_dir()}
    if missing:
        listed = ", ".join(f"{n}: {f}" for n, f in missing.items())
        raise FileNotFoundError(f"model folders not found ({listed}); run notebook 03_tuning first, "
                                "or pass `models` with existing folders")


def load_policy(name: str, folder: str | None, base_model: str = "SmolLM2-135M-Instruct",
                max_new_tokens: int = 48, max_prompt_tokens: int | None = 1280,
                batch_size: int | None = None, backend: str = "auto"):
    """The policy called ``name``: the base model (``folder`` None), a trained folder (notebook 03's
    ``<name>/`` with ``manifest.json`` and ``adapter/``, or a bare PEFT adapter folder), one of
    ``BASELINES``, or an endpoint entry (:func:`is_endpoint`: GPT-4o, a vLLM server). Greedy decoding,
    each output ending at its ``Action:`` line; the LoRA adapter is merged for speed; ``backend`` as in
    :func:`refinelib.policies.local_policy` (``"auto"``: the engine, same outputs as transformers, faster)."""
    from refinelib import policies

    if is_endpoint(folder):  # greedy like the local models; the episode log keys it by ``name``
        check_endpoint(name, folder)
        base_url = None if folder["endpoint"] == "openai" else folder["endpoint"]
        return policies.OpenAIPolicy(folder["model"], base_url=base_url, name=name, temperature=0.0,
                                     api_key_env=folder.get("api_key_env", "OPENAI_API_KEY"),
                                     max_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens)
    if folder in BASELINES:
        return policies.OraclePolicy() if folder == "oracle" else policies.RandomPolicy()
    kwargs = dict(name=name, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                  batch_size=batch_size, stop_at_action=True)
    if folder is None:
        return policies.TransformersPolicy.load(base_model, backend=backend, **kwargs)
    check_models({name: folder})
    path = Path(folder)
    if (path / "manifest.json").is_file():
        from refinelib.train import load_trained

        model, tokenizer = load_trained(path)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload().eval()
        policy = policies.local_policy(model, tokenizer, backend, **kwargs)
        policy.name = name  # the log key is the model's name, whatever class built it
        return policy
    adapter = path / "adapter" if (path / "adapter").is_dir() else path
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no finished model (no manifest.json, adapter/ or "
                                "adapter_config.json): run notebook 03_tuning to the end")
    return policies.TransformersPolicy.load(base_model, adapter=str(adapter), backend=backend, **kwargs)


def suite_family(name: str) -> str:
    """The environment family of the suite called ``name`` (without building the suite)."""
    if name not in registry.SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {sorted(registry.SUITES)}")
    return registry.SUITES[name].family


def episodes_path(eval_run_id: str, name: str) -> Path:
    """The shared episode log of model ``name``:
    ``artifacts/evaluation/<eval_run_id>/episodes/<name>.jsonl``."""
    return artifacts_dir("evaluation", eval_run_id, "episodes") / f"{name}.jsonl"


def model_identity(folder: str | Path | None) -> str | None:
    """What tells two trainings in the same folder apart: the manifest's time and data fingerprint
    (None for the base model, a baseline policy or a folder without a manifest)."""
    if is_endpoint(folder):  # what the endpoint serves is its business: the model name is all we know
        return f"{folder.get('model')}@{redact_url(folder.get('endpoint'))}"
    manifest = Path(folder) / "manifest.json" if folder and folder not in BASELINES else None
    if manifest is None or not manifest.is_file():
        return None
    record = json.loads(manifest.read_text())
    return f"{record.get('written')}/{record.get('dataset_fingerprint')}"


def evaluate_model(name: str, folder: str | None, suites: Sequence[str], eval_run_id: str = "default",
                   scale: str = "small", max_instances: int | None = None, max_steps: int = 30,
                   perturbations: Sequence[str] | Mapping[str, Sequence[str]] = (evaluate.ORIGINAL,),
                   batch_size: int = 16,
                   max_new_tokens: int = 48, max_prompt_tokens: int | None = 1280,
                   base_model: str = "SmolLM2-135M-Instruct", progress_bar: bool = True) -> list[Episode]:
    """Play model ``name`` (see :func:`load_policy`) on ``suites`` into its shared log and return the
    episodes; the model is loaded (once) only when some episode is not logged yet.

    ``perturbations`` is a list of rules for every suite, or ``{suite: rules}`` when the families differ
    (a suite missing from the mapping is played with the original prompt only).

    A log played with another identity is set aside and played again (see the module docstring);
    an argument out of range raises ValueError before anything is loaded or set aside.
    """
    evaluate.check_arguments(batch_size, max_steps, 1, max_instances)
    path = episodes_path(eval_run_id, name)
    settings = {"model": describe(folder), "model_identity": model_identity(folder), "base_model": base_model,
                "scale": scale, "max_steps": max_steps, "max_new_tokens": max_new_tokens,
                "max_prompt_tokens": max_prompt_tokens, "temperature": 0.0}
    if folder in BASELINES:  # generation settings do not apply to them
        settings = {k: settings[k] for k in ("model", "scale", "max_steps")}
    if isinstance(perturbations, Mapping):
        groups = [([s], tuple(perturbations.get(s, (evaluate.ORIGINAL,)))) for s in suites]
    else:
        groups = [(list(suites), tuple(perturbations))]
    resolved = [evaluate.resolve(s, scale) for s, _ in groups]
    jobs = [evaluate.jobs_for(s, scale, max_instances=max_instances, perturbations=p)
            for s, (_, p) in zip(resolved, groups, strict=True)]
    with runs.RunLock(path.parent):
        # the same identity evaluate.run checks (it adds the policy's config once the model is loaded)
        evaluate.check_log(path, evaluate.log_identity([s for group in resolved for s in group], max_steps,
                                                       settings))
        logged = {e.key: e for e in EpisodeLog(path).read()}
        if all(j.key(name) in logged for group in jobs for j in group):
            return [logged[j.key(name)] for group in jobs for j in group]
        policy = load_policy(name, folder, base_model, max_new_tokens, max_prompt_tokens)
        policy.name = name
        try:
            return [e for s, (_, p) in zip(resolved, groups, strict=True)
                    for e in evaluate.run(policy, s, scale, max_steps=max_steps, log_path=path,
                                          batch_size=batch_size, max_instances=max_instances,
                                          progress_bar=progress_bar, perturbations=p, settings=settings)]
        finally:
            policy.close()


def evaluate_models(models: Mapping[str, str | None], suites: Sequence[str], eval_run_id: str = "default",
                    **kwargs) -> list[Episode]:
    """:func:`evaluate_model` for every ``{name: folder}``, after checking that every folder exists."""
    check_models(models)
    return [e for name, folder in models.items()
            for e in evaluate_model(name, folder, suites, eval_run_id, **kwargs)]


# ----- the main table --------------------------------------------------------------------------------
def main_table(df: pd.DataFrame, memorising: Sequence[str] = MEMORISING, n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """Success and progress rate (%) per model and suite with 95% bootstrap CIs, tidy.

    Args:
        df: a :func:`refinelib.metrics.episode_table` (original prompts only are used).
        memorising: models trained on the environment of the suites tagged ``held_in``; those cells are
            held-in (the paper's Table 1 rule), every other cell is held-out.

    Returns:
        One row per (policy, suite): ``paper_task``, ``held_in``, ``n_episodes``, ``success_rate``,
        ``progress_rate`` and their ``_lo`` / ``_hi`` bounds, all in %.
    """
    df = df[df.perturbation == evaluate.ORIGINAL]
    out = summarize(df, by=("policy", "suite", "split"), n_boot=n_boot, seed=seed)
    out["paper_task"] = out["suite"].map(PAPER_TASK)
    out["held_in"] = out["policy"].isin(list(memorising)) & (out["split"] == "held_in")
    rates = [f"{m}{s}" for m in ("success_rate", "progress_rate") for s in ("", "_lo", "_hi")]
    out[rates] = out[rates] * 100
    return out[["policy", "suite", "paper_task", "held_in", "n_episodes", *rates]]


def held_out_mean(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, the mean over its held-out cells of a :func:`main_table` (each suite weighs the same,
    like the paper's task means), with ``suites``: how many suites that mean averages (a memorising
    model has fewer held-out suites than the others)."""
    held_out = table[~table.held_in].groupby("policy", sort=False)
    out = held_out[["success_rate", "progress_rate"]].mean()
    out["suites"] = held_out["suite"].nunique()
    return out.reset_index()


def wide(table: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """A :func:`main_table` as the paper prints it: one row per model, one ``S / P`` cell per suite,
    ``*`` on held-in cells, and the held-out mean last."""
    cells = table.assign(cell=[f"{s:.1f} / {p:.1f}{'*' if h else ''}" for s, p, h in
                               zip(table.success_rate, table.progress_rate, table.held_in, strict=True)])
    out = cells.pivot(index="policy", columns="suite", values="cell")
    suites = [s for s in PAPER_TASK if s in out.columns] + [s for s in out.columns if s not in PAPER_TASK]
    out = out[suites]
    means = held_out_mean(table).set_index("policy")
    out["held-out mean"] = [f"{means.success_rate.get(p, float('nan')):.1f} / "
                            f"{means.progress_rate.get(p, float('nan')):.1f}"
                            f" ({_suites(means.suites.get(p, 0))})" for p in out.index]
    out.columns.name = None
    order = [p for p in (order or []) if p in out.index] + [p for p in out.index if p not in (order or [])]
    return out.loc[order]


def _suites(n: int) -> str:
    return f"{n} suite" if n == 1 else f"{n} suites"


def short_rule(perturbation: str) -> str:
    """``"perturb-v1:R1"`` -> ``"R1"``; ``"none"`` -> ``"original"``."""
    return "original" if perturbation == evaluate.ORIGINAL else perturbation.rpartition(":")[2]


# ----- the paper's Figure-2 failure modes ------------------------------------------------------------
_ID = r"[a-z][a-z ]*? \d+"  # a household object id: "apple 1", "desk lamp 2"
# The household command format (the engine's and AgentBoard's ALFWorld wording), object ids included.
HOUSEHOLD_FORMAT = tuple(re.compile(p) for p in (
    rf"go to {_ID}", rf"take {_ID} from {_ID}", rf"move {_ID} to {_ID}", rf"put {_ID} (in|on|in/on) {_ID}",
    rf"(heat|cool|clean) {_ID} (with|using) {_ID}", rf"(open|close|use|toggle|examine) {_ID}"))
# Household templates that are also native commands of another family ("go to red ball 1" in BabyAI).
NATIVE = {"babyai": (HOUSEHOLD_FORMAT[0],)}


def uses_household_format(action: str | None, family: str) -> bool:
    """True when ``action`` is a household command with object ids and not also a ``family`` command."""
    if action is None:
        return False
    text = normalized_action_text(action)
    native = NATIVE.get(family, ())
    return any(p.fullmatch(text) for p in HOUSEHOLD_FORMAT if p not in native)


def normalized_action_text(action: str) -> str:
    return " ".join(action.lower().split()).rstrip(".")


def memorised_format_steps(episode: Episode) -> list[int]:
    """Rejected steps in a memorised format: household commands on another family, or, under a
    household perturbation, commands in the old format the rule rewrote (Fig. 2b)."""
    if episode.family == "household":
        if episode.perturbation == evaluate.ORIGINAL:
            return []
        rule = get_rule("household", episode.perturbation)
        return [t for t, turn in enumerate(episode.turns) if turn.action is not None and not turn.valid
                and rule.inverse(turn.action.strip()) is None]
    return [t for t, turn in enumerate(episode.turns)
            if not turn.valid and uses_household_format(turn.action, episode.family)]


def repeated_failed_actions(episode: Episode, min_repeats: int = MIN_REPEATS) -> dict[str, list[int]]:
    """``{action: steps}`` per well-formed action the environment rejected ``min_repeats`` or more times."""
    steps: dict[str, list[int]] = {}
    for t, turn in enumerate(episode.turns):
        action = normalized_action(turn)
        if action is not None and not turn.valid:
            steps.setdefault(action, []).append(t)
    return {a: s for a, s in steps.items() if len(s) >= min_repeats}


def failure_modes(episodes: Iterable[Episode], min_repeats: int = MIN_REPEATS) -> pd.DataFrame:
    """One row per (episode, failure mode) found: key columns, ``mode``, ``action`` (the most frequent
    offending action), ``n_steps`` (steps showing the mode), ``steps`` (their indices), ``episode_steps``."""
    rows = []
    for e in episodes:
        key = {k: getattr(e, k) for k in KEY_COLUMNS}
        memorised = memorised_format_steps(e)
        if memorised:
            action = Counter(e.turns[t].action for t in memorised).most_common(1)[0][0]
            rows.append({**key, "mode": MEMORISED_FORMAT, "action": action, "n_steps": len(memorised),
                         "steps": memorised, "episode_steps": len(e.turns)})
        repeated = repeated_failed_actions(e, min_repeats)
        if repeated:
            action, steps = max(repeated.items(), key=lambda kv: len(kv[1]))
            rows.append({**key, "mode": REPEATED_FAILED_ACTION, "action": action,
                         "n_steps": sum(len(s) for s in repeated.values()),
                         "steps": sorted(t for s in repeated.values() for t in s),
                         "episode_steps": len(e.turns)})
    columns = [*KEY_COLUMNS, "mode", "action", "n_steps", "steps", "episode_steps"]
    return pd.DataFrame(rows, columns=columns)


def failure_mode_rates(episodes: Sequence[Episode], found: pd.DataFrame,
                       by: Sequence[str] = ("policy", "split")) -> pd.DataFrame:
    """Share of episodes per group showing each failure mode (0 where none was found)."""
    base = pd.DataFrame([{k: getattr(e, k) for k in KEY_COLUMNS} for e in episodes],
                        columns=list(KEY_COLUMNS))
    out = base.groupby(list(by), sort=True).size().rename("n_episodes").to_frame()
    ids = ["policy", "suite", "instance", "seed", "perturbation", "sample"]
    for mode in (MEMORISED_FORMAT, REPEATED_FAILED_ACTION):
        hit = found[found["mode"] == mode][ids].drop_duplicates()
        flagged = base.merge(hit.assign(_hit=True), on=ids, how="left")["_hit"].fillna(False).astype(bool)
        out[f"{mode} rate"] = flagged.groupby([base[b] for b in by]).mean()
    return out.reset_index()


def render_episode(episode: Episode, mark: Iterable[int] = (), width: int = 160,
                   max_turns: int | None = None) -> str:
    """A transcript: goal, first observation, then each step's thought, action and observation, with
    the step's error-taxonomy category; steps in ``mark`` are flagged with ``>>``."""
    marked, labels = set(mark), classify_steps(episode)

    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 3] + "..."

    lines = [f"[{episode.policy} | {episode.suite} | {episode.instance} | perturbation "
             f"{short_rule(episode.perturbation)} | success {episode.success} | "
             f"progress {episode.progress:.2f}]",
             f"Goal: {cut(episode.goal)}", f"Observation: {cut(episode.first_observation)}"]
    turns = list(enumerate(episode.turns))
    for t, turn in turns[:max_turns]:
        flag = ">>" if t in marked else "  "
        lines.append(f"{flag} step {t + 1} [{labels[t]}]")
        if turn.thought:
            lines.append(f"   Thought: {cut(turn.thought)}")
        action = turn.action if turn.action is not None else f"(none: {cut(turn.raw)})"
        lines.append(f"   Action: {action}")
        lines.append(f"   Observation: {cut(turn.observation)}")
    if max_turns is not None and len(turns) > max_turns:
        lines.append(f"   ... {len(turns) - max_turns} more steps")
    return "\n".join(lines)


# ----- the paper's reference tables (method.md §15) --------------------------------------------------
PAPER_SOURCE_MAIN = ("the paper's Table 1 (Fu et al., ICLR 2025; method.md §15.1): Success / Progress %, "
                     "* held-in")
PAPER_SOURCE_ROBUSTNESS = ("the paper's Table 3 (Fu et al., ICLR 2025; method.md §15.3): ALFWorld Success / "
                           "Progress % under the paper's perturbations P1-P5 (not our R1-R5)")
_PAPER_TASKS = ("ALFWorld", "BabyAI", "SciWorld", "PDDL", "Jericho")
_PAPER_MAIN = """
GPT-4o | 66.4 79.9 | 48.2 64.1 | 40.0 76.9 | 61.7 69.8 | 10.0 34.0
GPT-4o-mini | 37.3 65.0 | 36.6 51.9 | 23.3 49.8 | 25.0 49.1 | 10.0 28.5
LLaMA-3-8B-Instruct | 22.4 46.1 | 45.5 56.5 | 7.8 41.1 | 10.0 38.4 | 0.0 24.3
AgentGen (L3-8B) | 29.1 47.6 | 20.5 35.0 | - - | 11.7 23.0 | - -
AgentGym (L3-8B) | 61.9* 76.9* | 47.3* 61.4* | 18.9* 47.5* | 1.7 16.6 | 0.0 12.9
Agent-FLAN (L3-8B) | 67.2* 79.7* | 25.0 35.3 | 1.1 10.9 | 8.3 25.5 | 0.0 10.1
AgentRefine (L3-8B) | 44.8 63.8 | 37.5 50.4 | 14.4 42.6 | 16.6 37.8 | 10.0 32.3
Mistral-7B-Instruct-v0.3 | 12.4 35.9 | 36.6 45.8 | 6.7 24.7 | 13.3 27.8 | 0.0 17.3
AgentGym (M-7B) | 76.9* 86.7* | 40.2* 56.3* | 15.6* 48.3* | 1.7 7.3 | 0.0 13.0
Agent-FLAN (M-7B) | 77.6* 87.6* | 15.2 21.0 | 0.0 6.7 | 0.0 3.2 | 0.0 0.7
AgentRefine (M-7B) | 51.4 68.8 | 25.9 42.4 | 4.4 22.4 | 11.7 32.8 | 5.0 28.8
LLaMA-3-70B-Instruct | 67.2 75.2 | 48.2 61.8 | 42.2 75.4 | 55.0 79.8 | 25.0 46.4
Agent-FLAN (L3-70B) | 80.5* 86.8* | 32.1 41.2 | 5.5 16.4 | 25.0 53.7 | 0.0 13.6
AgentRefine (L3-70B) | 67.2 72.1 | 44.6 59.7 | 17.7 46.4 | 38.3 58.6 | 15.0 37.2
"""
_PAPER_ROBUSTNESS = """
LLaMA3-8B-Instruct|22.4 46.1|23.1 45.6|24.6 45.0|17.9 45.1|17.9 45.1|22.4 46.1|21.4 45.5|2.68 0.47
AgentGym | 61.9 76.9 | 29.1 59.2 | 49.2 65.3 | 32.8 53.9 | 38.8 48.2 | 5.9 28.7 | 36.3 55.4 | 19.97 16.66
Agent-FLAN | 67.2 79.7 | 21.6 58.8 | 51.4 71.3 | 27.6 53.5 | 52.2 67.9 | 1.5 19.7 | 36.9 58.5 | 21.98 22.53
AgentRefine | 44.8 63.8 | 50.0 66.5 | 51.5 66.7 | 54.5 70.0 | 45.5 60.6 | 44.8 63.8 | 48.5 65.2 | 3.73 3.56
"""


def _cells(block: str) -> Iterable[tuple[str, list[tuple[str, str]]]]:
    for line in block.strip().splitlines():
        name, *cells = (c.strip() for c in line.split("|"))
        yield name, [tuple(c.split()) for c in cells]


def _number(text: str) -> float:
    return float("nan") if text == "-" else float(text.rstrip("*"))


def paper_main_table() -> pd.DataFrame:
    """The paper's Table 1, tidy: ``model``, ``task``, ``success_rate``, ``progress_rate`` (%), ``held_in``
    (NaN where the paper has no number); labelled in ``attrs["source"]``."""
    rows = [{"model": name, "task": task, "success_rate": _number(s), "progress_rate": _number(p),
             "held_in": s.endswith("*")}
            for name, cells in _cells(_PAPER_MAIN) for task, (s, p) in zip(_PAPER_TASKS, cells, strict=True)]
    out = pd.DataFrame(rows)
    out.attrs["source"] = PAPER_SOURCE_MAIN
    return out


def paper_wide(models: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`paper_main_table` as printed: ``S / P`` cells, ``*`` held-in, then the mean over the tasks
    the paper has a number for (``mean``) and how many tasks that is (``tasks in mean``: 3 for AgentGen,
    which has no SciWorld or Jericho number); ``models`` picks and orders rows (default: all). Labelled in
    ``attrs["source"]``."""
    table = paper_main_table()
    cells = table.assign(cell=[("-" if pd.isna(s) else f"{s:.1f} / {p:.1f}{'*' if h else ''}") for s, p, h in
                               zip(table.success_rate, table.progress_rate, table.held_in, strict=True)])
    out = cells.pivot(index="model", columns="task", values="cell")[list(_PAPER_TASKS)]
    means = table.groupby("model")[["success_rate", "progress_rate"]].mean()  # NaN cells skipped
    counted = table.groupby("model")["success_rate"].count()  # the tasks each mean averages
    out["mean"] = [f"{means.success_rate[m]:.1f} / {means.progress_rate[m]:.1f}" for m in out.index]
    out["tasks in mean"] = [int(counted[m]) for m in out.index]
    out = out.loc[list(models) if models is not None else list(dict.fromkeys(table.model))]
    out.columns.name = None
    out.attrs["source"] = PAPER_SOURCE_MAIN
    return out


def paper_robustness_table() -> pd.DataFrame:
    """The paper's Table 3: one row per (model, metric), columns ``original``, ``P1``..``P5``, ``mean``
    and ``std (paper)`` as printed (method.md §15.3: the printed std fits no single formula)."""
    settings = ("original", "P1", "P2", "P3", "P4", "P5", "mean", "std (paper)")
    rows = []
    for name, cells in _cells(_PAPER_ROBUSTNESS):
        for i, metric in enumerate(("success", "progress")):
            rows.append({"model": name, "metric": metric,
                         **{s: float(c[i]) for s, c in zip(settings, cells, strict=True)}})
    out = pd.DataFrame(rows).set_index(["model", "metric"])
    out.attrs["source"] = PAPER_SOURCE_ROBUSTNESS
    return out
