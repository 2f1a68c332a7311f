"""The book's evaluation experiments: models by name, shared episode logs, the main table, failure modes.

Notebooks 01 (overfitting), 04 (generalisation) and 05 (robustness) evaluate the same models on the
same suites; they share one episode log per model, ``artifacts/evaluation/<eval_run_id>/episodes/
<name>.jsonl``, so an episode one notebook played is read back, not replayed, by the others::

    from refinelib.eval import experiment
    models = experiment.default_models("default")    # base, expert_only, refine (notebook 03's folders)
    episodes = experiment.evaluate_models(models, ["household_held_in", "pddl"], eval_run_id="default")
    table = experiment.main_table(metrics.episode_table(episodes))

Episodes are keyed by (policy, suite, instance, seed, perturbation, sample) only, so what changes an
episode (model folder and training, step limit, generation settings, and the suite, prompt and
environment-code versions: :func:`refinelib.eval.evaluate.log_identity`) is the log's identity, written next
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
from collections.abc import Mapping, Sequence
from pathlib import Path

from refinelib import paths, runs
from refinelib.envs import registry
from refinelib.eval import evaluate
from refinelib.eval.episodes import Episode, EpisodeLog
from refinelib.synth.llm import redact_url

BASELINES = ("oracle", "random")  # policies that need no model folder (value "oracle" / "random")


# ----- models and shared logs ------------------------------------------------------------------------
def default_models(tuning_run_id: str = "default",
                   names: Sequence[str] = ("base", "expert_only", "refine")) -> dict[str, str | None]:
    """``{name: folder}`` for the base model (None) and notebook 03's models under
    ``artifacts/tuning/<tuning_run_id>/<name>``."""
    return {n: None if n == "base" else str(paths.model_dir(tuning_run_id, n)) for n in names}


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
    :func:`refinelib.eval.policies.local_policy` (``"auto"``: the engine, same outputs as transformers,
    faster)."""
    from refinelib.eval import policies

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
        from refinelib.tune import models as model_loader

        model, tokenizer = model_loader.load(path, merge=True)
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
    path = paths.episode_log(eval_run_id, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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


def fresh_log(log_path: str | Path, settings: Mapping) -> bool:
    """Keep an episode log only while it was played with ``settings`` (a retrained model, other steps):
    they join the log's identity (:func:`refinelib.eval.evaluate.check_log`, with the suite, prompt and
    environment versions :func:`refinelib.eval.evaluate.run` adds), and a log played with other values is set
    aside as ``<log>.stale-<k>.jsonl`` with a warning naming them.

    Returns True when an old log was set aside.
    """
    path = Path(log_path)
    existed = path.exists()
    with runs.RunLock(path.parent):
        evaluate.check_log(path, runs.jsonable(dict(settings)))
    return existed and not path.exists()
