"""Episode logs: round trip, resume keys, and a line cut by a kill."""

from refinelib.eval.episodes import AgentTurn, Episode, EpisodeLog


def episode(seed, sample=0, success=False):
    turn = AgentTurn(raw="Thought: go.\nAction: go north", thought="go.", action="go north",
                     observation="You are in the hall.", valid=True, progress=0.5)
    return Episode("oracle", "pddl", f"pddl/gripper/{seed}", seed, "pddl", "gripper", "held_out", "1",
                   "goal", "obs", sample=sample, turns=[turn], success=success, progress=0.5)


def test_round_trip_and_keys(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    assert log.read() == [] and log.done() == set()
    log.append([episode(0), episode(0, sample=1), episode(1)])
    back = log.read()
    assert back == [episode(0), episode(0, sample=1), episode(1)]
    assert ("oracle", "pddl", "pddl/gripper/1", 1, "none", 0) in log.done()


def test_a_line_cut_by_a_kill_is_skipped_and_counted_and_appending_continues(tmp_path):
    path = tmp_path / "episodes.jsonl"
    log = EpisodeLog(path)
    log.append([episode(0)])
    with path.open("a") as f:
        f.write(episode(1).to_json()[:40])  # the kill came mid-write
    assert [e.seed for e in log.read()] == [0] and log.skipped_lines == 1
    log.append([episode(1)])
    assert [e.seed for e in log.read()] == [0, 1] and log.skipped_lines == 1


def test_a_rerun_of_a_key_replaces_rather_than_duplicates(tmp_path):
    log = EpisodeLog(tmp_path / "episodes.jsonl")
    log.append([episode(0)])
    log.append([episode(0, success=True)])
    (only,) = log.read()
    assert only.success
