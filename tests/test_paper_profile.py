"""`PROFILE=paper` is consistent, and a rehearsal of it runs every chapter on the CPU.

The rehearsal is the paper profile (configs/paper/) with two kinds of change only, made by
`refinelib.report.runbook.rehearsal_parameters`: tiny sizes (`runbook.REHEARSAL_SIZES`: instances, steps,
trajectories, tokens) and other models (a tiny Llama saved to a temporary folder as the base model, and
a teacher served over real HTTP by tests/fake_openai.py on 127.0.0.1). Everything else is the paper's,
with `smoke = False`: the LLM teacher path, full fine-tuning of every ablation variant, AgentBoard-scale
suites, the robustness rules, Best-of-N, the data-scaling curve and the results chapters.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from fake_openai import FakeOpenAI
from papermill.exceptions import PapermillExecutionError
from test_accelerate_configs import launcher_env
from tiny_model import tiny_model, tiny_tokenizer

from refinelib import config
from refinelib.paths import cache_dir
from refinelib.report import runbook
from refinelib.synth import themes
from refinelib.synth.teacher import grounded_trajectory
from refinelib.tune.train import _training_arguments
from refinelib.tune.train_cli import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# `make book`'s order (the Makefile's dependencies): synthesis and tuning come before chapter 01
ORDER = ["00", "02", "03", "01", "04", "05", "06", "07", "08", "09"]
TEACHER = "fake-gpt-4o"
FAKE_KEY = "sk-test-rehearsal-1f2e"


def paper(stem: str) -> dict:
    """The paper profile's parameters for notebook ``stem`` (empty when it sets none)."""
    path = CONFIGS / "paper" / f"{stem}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def is_size(value) -> bool:
    """A count or a length: a whole number >= 0, "all", or a list of those (or a mapping to them: the shared
    episode settings' overrides)."""
    if isinstance(value, dict):
        return all(map(is_size, value.values()))
    if isinstance(value, list):
        return all(map(is_size, value))
    return value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


# ----- the paper profile is consistent -------------------------------------------------------------------
def test_the_rehearsal_changes_sizes_and_model_names_only():
    models = {"base_model": "/tmp/tiny", "model": TEACHER, "base_url": "http://127.0.0.1:1/v1"}
    assert set(runbook.REHEARSAL_SIZES) <= {p.stem for p in NOTEBOOKS}
    for path in NOTEBOOKS:
        assert set(runbook.REHEARSAL_SIZES.get(path.stem, {})) <= runbook.SIZE_KEYS, path.stem
        original = {**runbook.profile_parameters(path, "paper", CONFIGS),
                    **runbook.runner_parameters(path, "paper")}  # the runner gives a chapter its profile
        rehearsal = runbook.rehearsal_parameters(path, "paper", models, CONFIGS)
        changed = {k for k in original.keys() | rehearsal.keys() if original.get(k) != rehearsal.get(k)}
        assert changed <= runbook.SIZE_KEYS | runbook.MODEL_KEYS, (path.stem, changed)
        assert rehearsal.get("profile", "paper") == "paper"  # the paper's episode settings, at tiny sizes
        overrides = rehearsal.get("episode_overrides", {})
        assert set(overrides) <= {"max_instances", "robustness_instances", "max_steps", "max_new_tokens"}
        assert rehearsal.get("smoke", False) is False  # the paper's code paths, not the smoke ones
        defaults = runbook.notebook_parameters(path)
        for key in runbook.SIZE_KEYS & (defaults.keys() | rehearsal.keys()):  # every "size" is one
            for value in (defaults.get(key, 0), original.get(key, 0), rehearsal.get(key, 0)):
                assert is_size(value), f"{path.stem}: {key}={value!r} is not a size"
    with pytest.raises(ValueError, match=r"\['method'\] are not model parameters"):
        runbook.rehearsal_parameters(NOTEBOOKS[3], "paper", {"method": "lora"}, CONFIGS)


def test_the_command_line_rehearses_a_profile_with_models_from_p(monkeypatch, tmp_path):
    ran = {}
    monkeypatch.setattr(runbook, "execute", lambda src, out, params: ran.update(params) or {"seconds": 0})
    monkeypatch.chdir(ROOT)
    path = next(p for p in NOTEBOOKS if p.stem == "07_ablations")
    runbook.main([str(path), str(tmp_path / "out.ipynb"), "--profile", "paper", "--rehearse",
                  "-p", "base_model", "SmolLM2-135M-Instruct"])
    expected = runbook.rehearsal_parameters(path, "paper", {"base_model": "SmolLM2-135M-Instruct"}, CONFIGS)
    assert ran == expected and ran["steps"] == 2 and ran["base_model"] == "SmolLM2-135M-Instruct"
    assert ran["learning_rate"] == paper("07_ablations")["learning_rate"]


def test_the_paper_profile_has_one_base_model_in_every_chapter_and_its_training_yaml():
    bases = {stem: paper(stem)["base_model"] for stem in
             ("01_overfitting_analysis", "03_refinement_tuning", "04_generalization", "05_robustness",
              "06_diversity", "07_ablations")}
    training = load_config(["--config", str(CONFIGS / "paper" / "train_refine.yaml")])
    assert set(bases.values()) == {training.base_model} == {"meta-llama/Meta-Llama-3-8B-Instruct"}
    for path in NOTEBOOKS:  # every chapter with a base row can be told which model it is
        if path.stem in bases:
            assert "base_model" in runbook.notebook_parameters(path), path.stem
    assert paper("03_refinement_tuning")["method"] == training.method == "full"
    assert paper("02_refinement_synthesis")["teacher"] == "openai"
    assert config.load_episode_settings("paper", configs=CONFIGS).scale == "agentboard"
    assert all(paper(stem)["shared_episodes"] for stem in ("06_diversity", "07_ablations"))  # the same scale


def test_the_paper_training_yaml_is_method_md_section_10():
    config = load_config(["--config", str(CONFIGS / "paper" / "train_refine.yaml")])
    assert (config.method, config.learning_rate, config.lr_scheduler, config.warmup_ratio) == (
        "full", 2e-5, "cosine", 0.03)
    assert (config.epochs, config.max_length) == (3, 8192)
    assert config.bf16 is True and config.gradient_checkpointing is True
    gpus = yaml.safe_load((CONFIGS / "accelerate" / "deepspeed_zero3.yaml").read_text())["num_processes"]
    assert gpus * config.batch_size * config.grad_accumulation == 64
    assert config.train_file.startswith("artifacts/synthesis/default/datasets/refinement/")


def test_the_paper_yaml_builds_the_trainers_arguments_under_the_fsdp_launch(monkeypatch, tmp_path):
    """As every FSDP process does: accelerate's launch environment, then the Trainer's arguments from the
    YAML with the flag docs/scaling.md gives (FSDP checkpoints activations itself)."""
    env = launcher_env("fsdp.yaml", monkeypatch)
    config = load_config(["--config", str(CONFIGS / "paper" / "train_refine.yaml"),
                          "--gradient_checkpointing", "false", "--output_dir", str(tmp_path)])
    args = _training_arguments(config, has_eval=True, eval_on_start=False)
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "true" and args.gradient_checkpointing is False
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16" and args.bf16 is True
    gpus = yaml.safe_load((CONFIGS / "accelerate" / "fsdp.yaml").read_text())["num_processes"]
    assert gpus * args.per_device_train_batch_size * args.gradient_accumulation_steps == 64
    assert (args.learning_rate, args.num_train_epochs, args.lr_scheduler_type) == (2e-5, 3, "cosine")


def test_chapter_07_sizes_fit_the_paper_training_split():
    """Every whole-number size is far below what chapter 02's split holds (its validation share is drawn
    by hash: 5 standard deviations of margin), and the largest point is the whole split."""
    synthesis, ablations = paper("02_refinement_synthesis"), paper("07_ablations")
    n = synthesis["n_trajectories"]
    p = synthesis.get("val_fraction", runbook.notebook_parameters(NOTEBOOKS[2])["val_fraction"])
    floor = n * (1 - p) - 5 * math.sqrt(n * p * (1 - p))
    sizes = ablations["sizes"]
    assert sizes[-1] == "all", sizes
    assert all(isinstance(s, int) and 0 < s < floor for s in sizes[:-1]), (sizes, floor)


# ----- the rehearsal ---------------------------------------------------------------------------------------
class Teacher:
    """A competent teacher LLM: the grounded teacher's scripts and trajectories, which verify."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.scripts: dict[str, int] = {}

    def __call__(self, request: dict) -> str:
        text = request["messages"][-1]["content"]
        if "persona:\n\n" in text:
            persona = text.split("persona:\n\n", 1)[1].split("\n\n", 1)[0].strip()
            k = self.index.setdefault(persona, len(self.index))
            script = {key: v for key, v in themes.generate_script(700 + k).items() if key != "Engine"}
            self.scripts[json.dumps(script, indent=1, ensure_ascii=False)] = k
            return json.dumps(script, indent=1)
        first = request["messages"][1]["content"]
        k = next(k for s, k in self.scripts.items() if s in first)
        return json.dumps(grounded_trajectory(themes.generate_script(700 + k), 700 + k))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Every chapter through the paper profile at the rehearsal's sizes: (workdir, seconds, server)."""
    work = tmp_path_factory.mktemp("rehearsal")
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(work / "tiny-llama")
    tokenizer.save_pretrained(work / "tiny-llama")
    patch = pytest.MonkeyPatch()
    patch.setenv("REFINELIB_ARTIFACTS", str(work / "artifacts"))
    # generated games from the usual cache, but the teacher's answers (keyed by this run's port) kept here
    cache = work / "cache"
    cache.mkdir()
    for folder in cache_dir().iterdir():
        if folder.is_dir() and folder.name != "llm":
            (cache / folder.name).symlink_to(folder)
    patch.setenv("REFINELIB_CACHE", str(cache))
    patch.setenv("OPENAI_API_KEY", FAKE_KEY)
    # a checkout's layout: chapters 08 and 09 read notebooks/ and book/executed/ where they run, the
    # evaluation chapters configs/paper/episodes.yaml
    (work / "notebooks").symlink_to(ROOT / "notebooks")
    (work / "configs").symlink_to(CONFIGS)
    patch.chdir(work)
    started = time.time()
    try:
        with FakeOpenAI(Teacher()) as server:
            models = {"base_model": str(work / "tiny-llama"), "model": TEACHER, "base_url": server.base_url}
            assert sorted(ORDER) == [p.stem[:2] for p in NOTEBOOKS]
            for path in sorted(NOTEBOOKS, key=lambda p: ORDER.index(p.stem[:2])):
                params = runbook.rehearsal_parameters(path, "paper", models, CONFIGS)
                runbook.execute(path, work / "book" / "executed" / path.name, params)
        yield work, time.time() - started, server
    finally:
        patch.undo()


def manifest(work: Path, *parts: str) -> dict:
    return json.loads((work / "artifacts").joinpath(*parts, "manifest.json").read_text())


@pytest.mark.slow
def test_the_paper_profile_rehearses_on_a_cpu(rehearsal):
    work, seconds, server = rehearsal
    tiny = str(work / "tiny-llama")
    for path in NOTEBOOKS:
        record = json.loads((work / "book" / "executed" / f"{path.stem}.run.json").read_text())
        assert record["parameters"].get("smoke", False) is False
    print(f"rehearsal of PROFILE=paper: {seconds:.0f} s")

    # 02: the teacher over HTTP wrote every script and trajectory (its answers cached in the test's folder)
    assert any((work / "cache" / "llm").rglob("*.json"))
    synthesis = manifest(work, "synthesis", "default")
    assert synthesis["teacher"] == "openai" and synthesis["base_url"] == server.base_url
    wanted = runbook.REHEARSAL_SIZES["02_refinement_synthesis"]["n_trajectories"]
    assert {r["model"] for r in server.requests} == {TEACHER} and len(server.requests) >= 2 * wanted
    data = work / "artifacts" / "synthesis" / "default" / "datasets" / "refinement"
    assert sum(len((data / f"{s}.jsonl").read_text().splitlines()) for s in ("train", "validation")) == wanted

    # 03: full fine-tuning of every variant on the given base model
    tuning = manifest(work, "tuning", "default")
    assert set(tuning["models"]) == {"expert_only", "refine", "erroneous_loss", "no_refinement_loss",
                                     "strip_errors"}
    for name in tuning["models"]:
        config = manifest(work, "tuning", "default", name)["config"]
        assert (config["method"], config["base_model"]) == ("full", tiny)

    # 01 / 04 / 05: the base row is the profile's base model, on AgentBoard-scale suites
    for chapter in ("overfitting", "generalization", "robustness"):
        settings = manifest(work, chapter, "default")["settings"]
        assert settings["base_model"] == tiny and settings["scale"] == "agentboard", chapter
    base_log = json.loads((work / "artifacts" / "evaluation" / "default" / "episodes" / "base.settings.json")
                          .read_text())
    assert base_log["base_model"] == tiny
    environments = manifest(work, "environments", "default")
    household = sum(environments["suites"][f"household_held_{s}"]["instances"] for s in ("in", "out"))
    assert household == 134  # AgentBoard's ALFWorld size

    # 06: Best-of-N with N samples; 07: the ablations and one scaling curve on one base model
    assert manifest(work, "diversity", "default")["n_samples"] == 2
    ablations = manifest(work, "ablations", "default")
    assert ablations["from_tuning"] is True
    curve = [label for label in ablations["models"] if label.startswith("refine@")]
    split = len((data / "train.jsonl").read_text().splitlines())
    assert len(curve) == 2 and ablations["sizes"] == [2, split]  # "all": the whole training split
    for label in curve:
        config = json.loads((Path(ablations["models"][label]) / "manifest.json").read_text())["config"]
        assert config["base_model"] == tiny and config["method"] == "lora"
    scaling = (work / "artifacts" / "ablations" / "default" / "scaling.csv").read_text().splitlines()
    assert len(scaling) == 3

    # 08 / 09 gather it all
    results = manifest(work, "results", "default")["artifacts"]
    assert results and all(results.values()), [k for k, found in results.items() if not found]
    assert manifest(work, "reproducibility", "default")["notebooks"] == len(NOTEBOOKS) - 1


@pytest.mark.slow
def test_chapter_07_refuses_sizes_larger_than_the_training_split_before_training(rehearsal, monkeypatch):
    work, _, _ = rehearsal
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(work / "artifacts"))
    path = next(p for p in NOTEBOOKS if p.stem == "07_ablations")
    params = runbook.rehearsal_parameters(path, "paper", {"base_model": str(work / "tiny-llama")}, CONFIGS)
    params.update(sizes=[2, 4000], run_id="too-many")
    with pytest.raises(PapermillExecutionError, match="sizes \\[4000\\]: the training split holds"):
        runbook.execute(path, work / "too-many.ipynb", params)
    assert not (work / "artifacts" / "ablations" / "too-many" / "models").exists()  # nothing was trained
    executed = nbformat.read(work / ".too-many.partial.ipynb", as_version=4)
    assert any("training split holds" in str(c.get("outputs")) for c in executed.cells)
