"""The paper's training YAML launched as a real 2-process run on the CPU (torchrun, gloo), then resumed.

`accelerate launch` starts several CPU processes only through mpirun, so the two processes come from
`torch.distributed.run` (torchrun), which sets the same RANK / WORLD_SIZE / MASTER_* variables the
accelerate launcher sets; the Trainer then runs DistributedDataParallel over gloo. The command line is
the paper's, `python -m refinelib.tune.train_cli --config configs/paper/train_refine.yaml`, with only the
model,
the data paths and the sizes replaced (the paper's full fine-tuning, bf16, gradient checkpointing,
accumulation and schedule all stay on).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_train import episode, tiny_dir, write_jsonl  # noqa: F401 (tiny_dir is a fixture)

from refinelib.tune.masking import render_many
from refinelib.tune.models import load_tokenizer
from refinelib.tune.train_cli import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper" / "train_refine.yaml"
RANKS = 2
RECORDS = 16


def launch(tmp: Path, tiny: str, logs: str) -> subprocess.CompletedProcess:
    """torchrun with 2 CPU processes on the paper's YAML; every rank's output goes to ``tmp/logs/...``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(RANKS),
               "--log-dir", str(tmp / logs), "--redirects", "3",
               "-m", "refinelib.tune.train_cli", "--config", str(PAPER),
               "--base_model", tiny, "--train_file", str(tmp / "train.jsonl"),
               "--validation_file", str(tmp / "validation.jsonl"), "--output_dir", str(tmp / "run"),
               "--max_length", "512", "--save_steps", "1", "--eval_steps", "1", "--logging_steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def rank_logs(tmp: Path, logs: str) -> dict[int, dict[str, str]]:
    """{rank: {"stdout": text, "stderr": text}} from torchrun's --log-dir."""
    found = {}
    for path in (tmp / logs).glob("*/attempt_0/*/stdout.log"):
        rank = int(path.parent.name)
        found[rank] = {"stdout": path.read_text(), "stderr": (path.parent / "stderr.log").read_text()}
    return found


@pytest.fixture(scope="module")
def launched(tiny_dir, tmp_path_factory):  # noqa: F811
    """One finished 2-process run: (tmp, its loss history, its manifest, the rank logs)."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    write_jsonl(tmp / "train.jsonl", [episode(i) for i in range(RECORDS)])
    write_jsonl(tmp / "validation.jsonl", [episode(i) for i in range(RECORDS, RECORDS + 2)])
    launch(tmp, tiny_dir, "logs-first")
    history = pd.read_csv(tmp / "run" / "loss_history.csv")
    manifest = json.loads((tmp / "run" / "manifest.json").read_text())
    return tmp, history, manifest, rank_logs(tmp, "logs-first")


def test_the_paper_yaml_keeps_its_settings_under_the_rehearsal_flags(tiny_dir, tmp_path):  # noqa: F811
    config = load_config(["--config", str(PAPER), "--base_model", tiny_dir, "--max_length", "512"])
    assert (config.method, config.bf16, config.gradient_checkpointing) == ("full", True, True)
    assert (config.learning_rate, config.epochs, config.warmup_ratio) == (2e-5, 3, 0.03)
    assert config.batch_size * config.grad_accumulation == 8


def test_both_ranks_ran_and_only_the_main_process_reported(launched):
    tmp, history, manifest, logs = launched
    assert sorted(logs) == [0, 1]
    summary = json.loads(logs[0]["stdout"][logs[0]["stdout"].index("{"):])
    assert summary["global_step"] == manifest["global_step"]
    assert "{" not in logs[1]["stdout"], "only rank 0 writes outputs and prints the summary"
    hardware = manifest["hardware"]
    assert hardware["world_size"] == RANKS and hardware["device"].startswith("cpu")
    assert hardware["bf16"] is True and hardware["gradient_checkpointing"] is True  # the paper's settings


def test_the_data_is_sharded_over_the_ranks(launched):
    """Global batch = 2 ranks x batch 2 x accumulation 4 = 16 records, so one step per epoch; one process
    alone would need two."""
    tmp, history, manifest, logs = launched
    config = manifest["config"]
    per_step = RANKS * config["batch_size"] * config["grad_accumulation"]
    assert manifest["global_step"] == config["epochs"] * math.ceil(RECORDS / per_step) == 3
    train_rows = history[history.split == "train"]
    assert train_rows.step.tolist() == [1, 2, 3] and train_rows.epoch.tolist() == [1.0, 2.0, 3.0]


def test_the_loss_is_finite_logged_and_masked(launched, tiny_dir):  # noqa: F811
    tmp, history, manifest, logs = launched
    assert history.loss.map(math.isfinite).all() and len(history[history.split == "validation"]) == 4
    _, counts = render_many([episode(i) for i in range(RECORDS)], load_tokenizer(tiny_dir),
                            policy="refine", max_length=512)
    assert manifest["counts"]["train"] == counts  # the same mask as one process renders
    assert 0 < counts["supervised_tokens"] < counts["tokens"]


def test_a_crashed_launch_resumes_from_its_checkpoint(launched, tiny_dir):  # noqa: F811
    tmp, history, manifest, logs = launched
    run = tmp / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (run / "model" / "config.json").is_file()
    # as if the processes died after step 2's checkpoint: the later checkpoint and the outputs are gone
    for item in ("checkpoint-3", "model", "manifest.json"):
        shutil.rmtree(run / item) if (run / item).is_dir() else (run / item).unlink()
    launch(tmp, tiny_dir, "logs-resumed")
    resumed = json.loads((run / "manifest.json").read_text())
    assert Path(resumed["resumed_from"]).name == "checkpoint-2" and resumed["global_step"] == 3
    assert sorted(rank_logs(tmp, "logs-resumed")) == [0, 1]
    again = pd.read_csv(run / "loss_history.csv")
    assert again.step.tolist() == history.step.tolist()
    assert again.loss.tolist() == pytest.approx(history.loss.tolist(), rel=1e-5)  # exact continuation
