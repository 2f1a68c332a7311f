"""Ablation variants, nested subsets, Best-of-N and the paper's reference tables (refinelib.eval.ablation)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from refinelib.analysis import reference, tables
from refinelib.eval import experiment
from refinelib.synth.smoke import grounded_records
from refinelib.tune import ablation
from refinelib.tune.masking import POLICIES


def refinement_records(n: int) -> list[dict]:
    return grounded_records(n)  # the smoke runs' grounded-teacher records (refinelib.synth.smoke)


def erroneous(record: dict) -> int:
    return sum(t["from"] == "gpt" and not t["loss"] for t in record["conversations"])


def test_variants_are_the_papers_rows_with_known_mask_policies():
    assert [v.paper_row for v in ablation.VARIANTS.values()] == list(
        reference.paper_ablation_table().variant.unique())
    assert all(v.mask_policy in POLICIES for v in ablation.VARIANTS.values())
    with pytest.raises(ValueError, match="unknown ablation variant 'w/o'.*refine"):
        ablation.variant("w/o")


def test_variant_records_strip_errors_only_for_strip_errors():
    records = refinement_records(2)
    assert all(erroneous(r) >= 1 for r in records)
    assert ablation.variant_records(records, "refine") == records
    stripped = ablation.variant_records(records, "strip_errors")
    assert [erroneous(r) for r in stripped] == [0, 0]
    assert [r["id"] for r in stripped] == [r["id"] for r in records]
    assert all(erroneous(r) >= 1 for r in records), "the input records are not modified"


def test_nested_subsets_are_seeded_prefixes():
    records = [{"id": str(i)} for i in range(20)]
    subsets = ablation.nested_subsets(records, [10, 3, 6], seed=1)
    assert list(subsets) == [3, 6, 10]
    assert subsets[3] == subsets[6][:3] and subsets[6] == subsets[10][:6]
    assert len({r["id"] for r in subsets[10]}) == 10
    assert ablation.nested_subsets(records, [10], seed=1) == {10: subsets[10]}
    assert ablation.nested_subsets(records, [10], seed=2)[10] != subsets[10]
    with pytest.raises(ValueError, match=r"sizes \[21, 0\].*20 records"):
        ablation.nested_subsets(records, [5, 21, 0])


def episodes(rows):
    return pd.DataFrame([{"policy": p, "suite": s, "instance": i, "seed": 0, "perturbation": "none",
                          "sample": k, "success": ok, "progress": pr} for p, s, i, k, ok, pr in rows])


def test_best_of_n_counts_the_best_sample_per_instance():
    sampled = episodes([("m", "pddl", "a", 0, False, 0.2), ("m", "pddl", "a", 1, True, 1.0),
                        ("m", "pddl", "b", 0, False, 0.5), ("m", "pddl", "b", 1, False, 0.25)])
    greedy = episodes([("m", "pddl", "a", 0, False, 0.5), ("m", "pddl", "b", 0, False, 0.0)])
    table = tables.best_of_n_table(greedy, sampled).iloc[0]
    assert table.n_instances == 2 and table.n_samples == 2
    assert table.greedy_success == 0 and table.bon_success == 50
    assert table.greedy_progress == 25 and table.bon_progress == 75
    assert table.delta_success == 50 and table.delta_progress == 50


def test_best_of_n_table_refuses_unmatched_instances():
    sampled = episodes([("m", "pddl", "a", 0, True, 1.0)])
    greedy = episodes([("m", "pddl", "b", 0, False, 0.0)])
    with pytest.raises(ValueError, match="not both.*'a'"):
        tables.best_of_n_table(greedy, sampled)
    with pytest.raises(ValueError, match="no sampled episodes"):
        tables.best_of_n(sampled.iloc[:0])


def test_paper_tables_hold_the_printed_numbers_and_are_labelled():
    ab = reference.paper_ablation_table()
    assert "Table 2" in ab.attrs["source"]
    row = ab[(ab.variant == "w erroneous loss") & (ab.task == "ALFWorld")].iloc[0]
    assert (row.success_rate, row.progress_rate) == (29.9, 43.9)
    bon = reference.paper_best_of_n_table()
    refine = bon[(bon.model == "AgentRefine") & (bon.task == "ALFWorld") & (bon.decoding == "BoN")].iloc[0]
    # method.md §15.4 prints Δ AgentRefine ALFWorld 48.5 / 32.8
    assert (refine.delta_success, refine.delta_progress) == (48.5, 32.8)
    assert (refine.delta_success_computed, refine.delta_progress_computed) == (48.5, 32.8)
    assert bon[bon.decoding == "greedy"].delta_success.isna().all()
    both = bon[bon.decoding == "BoN"]
    differ = both[(both.delta_success != both.delta_success_computed)
                  | (both.delta_progress != both.delta_progress_computed)]
    # the one misprint of the paper's table: Agent-FLAN ALFWorld success, 85.5 - 67.2 = 18.3, printed 28.3
    assert differ[["model", "task", "delta_success", "delta_success_computed"]].values.tolist() == [
        ["Agent-FLAN", "ALFWorld", 28.3, 18.3]]
    scaling = reference.paper_scaling_table()
    assert scaling.trajectories.tolist() == [4000, 8000, 16000, 32000, 64000]
    assert scaling.avg_success.tolist()[3] == 30.5 and "Size" in scaling.attrs["source"]
    wide = reference.cells(ab, "variant")
    assert wide.loc["AgentRefine", "Jericho"] == "5.0 / 26.2" and wide.attrs["source"] == ab.attrs["source"]


def test_fresh_log_sets_aside_a_log_played_with_other_settings(tmp_path):
    log = tmp_path / "episodes" / "m.jsonl"
    assert experiment.fresh_log(log, {"steps": 2}) is False
    log.write_text("{}\n")
    assert experiment.fresh_log(log, {"steps": 2}) is False and log.exists()
    with pytest.warns(UserWarning, match="steps: 2 -> 3"):
        assert experiment.fresh_log(log, {"steps": 3}) is True and not log.exists()
    assert (log.parent / "m.stale-1.jsonl").read_text() == "{}\n"  # kept aside, not deleted
    assert json.loads(log.with_suffix(".settings.json").read_text())["steps"] == 3


def test_fresh_log_and_evaluate_run_share_one_identity(tmp_path):
    """The caller's settings and the versions evaluate.run adds live in one record: neither sets the
    other's log aside, and a change of either does."""
    import warnings

    from refinelib.eval import evaluate
    from refinelib.eval.policies import OraclePolicy

    log = tmp_path / "m.jsonl"
    kwargs = dict(max_instances=1, progress_bar=False, log_path=log)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            assert experiment.fresh_log(log, {"model": "oracle", "identity": None}) is False
            first = evaluate.run(OraclePolicy(), ["pddl"], **kwargs)
    recorded = json.loads(log.with_suffix(".settings.json").read_text())
    assert recorded["model"] == "oracle" and recorded["suite:pddl"] == "1+pddl-1"
    with pytest.warns(UserWarning, match="identity: None -> 'retrained'"):
        assert experiment.fresh_log(log, {"model": "oracle", "identity": "retrained"}) is True
    assert evaluate.run(OraclePolicy(), ["pddl"], **kwargs)[0].instance == first[0].instance


def short_record(i: int) -> dict:
    """A conversation short enough for the tiny tokenizer: one error, its feedback, the fix."""
    turns = [("human", False, "Your goal is to open drawer 1. Answer as Thought: ...\nAction: ..."),
             ("gpt", False, "Thought: I open it.\nAction: open drawr 1"),
             ("human", False, "Observation: Error: Invalid command format."),
             ("gpt", True, f"Thought: The name is drawer {i}.\nAction: open drawer 1"),
             ("human", False, "Observation: The drawer opens.")]
    return {"id": f"short-{i}",
            "conversations": [{"from": f, "loss": loss, "value": v} for f, loss, v in turns]}


def test_train_variant_trains_once_and_reuses(tmp_path):
    from tiny_model import tiny_model, tiny_tokenizer

    base = tmp_path / "tiny"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    records = [short_record(i) for i in range(3)]
    kwargs = dict(base_model=str(base), max_steps=1, batch_size=2, max_length=256, save_steps=100)
    folder, trained = ablation.train_variant("strip_errors", records, tmp_path / "m", **kwargs)
    assert trained and (folder / "manifest.json").is_file() and (folder / "adapter").is_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["config"]["mask_policy"] == "refine"
    assert ablation.train_variant("strip_errors", records, folder, **kwargs) == (folder, False)
    # another training into the folder: the old one is set aside (not resumed, not mixed), naming why
    with pytest.warns(UserWarning, match=r"another run \(.*train: '\w+' -> '\w+'\)"):
        assert ablation.train_variant("strip_errors", records[:2], folder, **kwargs) == (folder, True)
    aside = tmp_path / "m.stale-1"
    assert json.loads((aside / "manifest.json").read_text()) == manifest and (aside / "adapter").is_dir()
    recorded = json.loads((folder / "ablation.json").read_text())
    assert recorded["variant"] == "strip_errors" and recorded["config.max_steps"] == 1
    assert (folder / "manifest.json").is_file()
    with pytest.warns(UserWarning, match=r"config.max_steps: 1 -> 2"):
        ablation.train_variant("strip_errors", records[:2], folder, **{**kwargs, "max_steps": 2})
    # a second training into the same folder while one runs fails at once, naming the running one
    from refinelib.runs import RunLockedError
    from tests.writers import held

    with held(folder) as holder:
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}\b"):
            ablation.train_variant("strip_errors", records, folder, **kwargs)


def test_heldout_losses_split_out_the_refinement_turns():
    import torch
    from tiny_model import tiny_model, tiny_tokenizer

    from refinelib.tune.masking import render

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    record = short_record(0)
    out = ablation.heldout_losses(model, tokenizer, [record], max_length=256)
    trained = render(record, tokenizer, policy="refine", max_length=256)
    assert out["tokens"] == trained.n_supervised
    # the short record trains one assistant turn, and it is a refinement turn: the two losses coincide
    assert out["refinement_tokens"] == out["tokens"] > 0
    assert out["loss"] == pytest.approx(out["refinement_turn_loss"])
    ids = torch.tensor([trained.input_ids])
    expected = float(model(input_ids=ids, labels=torch.tensor([trained.labels])).loss)
    assert out["loss"] == pytest.approx(expected, rel=1e-4)
    two = {**record, "conversations": record["conversations"] + [
        {"from": "gpt", "loss": True, "value": "Thought: Done.\nAction: look"}]}
    both = ablation.heldout_losses(model, tokenizer, [two], max_length=256)
    assert both["tokens"] > both["refinement_tokens"] == out["refinement_tokens"]


def test_model_identity_changes_with_the_manifest(tmp_path):
    assert experiment.model_identity(None) is None and experiment.model_identity(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"written": "t1", "dataset_fingerprint": "abc"}))
    first = experiment.model_identity(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"written": "t2", "dataset_fingerprint": "abc"}))
    assert first == "t1/abc" and experiment.model_identity(tmp_path) != first
