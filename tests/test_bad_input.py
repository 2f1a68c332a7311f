"""Bad input to every public entry point: one error naming the field, file or line, before any work.

Each row is (what is called, the error, a pattern its message must match). The calls are cheap because
the checks come first: no environment backend starts, no file is written, no request is sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinelib.data import chat, dataset
from refinelib.envs import Instance, make_instance, suite
from refinelib.envs.registry import make
from refinelib.schema import RecordError
from refinelib.synth import personas
from refinelib.synth.llm import LLMClient, LLMConfig
from refinelib.synth.synthesis import SynthesisConfig, load_run, synthesize

RECORD = {"id": "r1", "conversations": [{"from": "human", "loss": False, "value": "hi"},
                                        {"from": "gpt", "loss": True, "value": "Thought: x\nAction: y"}]}


INPUTS: set[Path] = set()  # files a row writes as its input (not work done by the call)


def write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    INPUTS.add(path)
    return path


def local_client(tmp: Path) -> LLMClient:
    # nothing listens there: a request would fail, so a passing row proves none was sent
    return LLMClient(LLMConfig("m", base_url="http://127.0.0.1:9/v1", max_retries=0), cache_dir=tmp / "c")


ENVIRONMENTS = [
    ("suite name", lambda t: suite("household_everything"), ValueError,
     r"unknown suite 'household_everything'"),
    ("suite name type", lambda t: suite(3), ValueError, r"unknown suite 3"),
    ("suite scale", lambda t: suite("pddl", scale="huge"), ValueError, r"unknown scale 'huge'"),
    ("textadventure option",
     lambda t: make_instance(Instance("textadventure", "cooking", 1, (("bogus", 3),))), ValueError,
     r"unknown textadventure options \['bogus'\]"),
    ("pddl option", lambda t: make_instance(Instance("pddl", "gripper", 0, (("sizes", 3),))),
     ValueError, r"unknown pddl options \['sizes'\]"),
    ("babyai option", lambda t: make_instance(Instance("babyai", "GoToRedBallGrey", 0, (("grid", 8),))),
     ValueError, r"unknown babyai options \['grid'\]"),
    ("household option", lambda t: make_instance(Instance("household", "pick_and_place_simple", 0,
                                                          (("layout", 2),))),
     ValueError, r"unknown household options \['layout'\]"),
    ("sciworld option", lambda t: make_instance(Instance("sciworld", "find-living-thing", 0,
                                                         (("simplify", "easy"),))),
     ValueError, r"unknown sciworld options \['simplify'\]"),
    ("make option", lambda t: make("textadventure", "cooking", difficulty="easy", level=2),
     ValueError, r"unknown textadventure options \['level'\]"),
    ("task", lambda t: make_instance(Instance("pddl", "sokoban", 0)), ValueError, r"unknown pddl task"),
    ("sciworld task", lambda t: make_instance(Instance("sciworld", "find-living-things", 0)), ValueError,
     r"unknown sciworld task \['find-living-things'\]"),
    ("family", lambda t: make_instance(Instance("jericho", "zork1", 0)), ValueError,
     r"unknown environment family 'jericho'"),
    ("not an instance", lambda t: make_instance(("pddl", "gripper", 0)), ValueError,
     r"instance must be a refinelib.envs.Instance, got tuple"),
    ("instance seed", lambda t: Instance("pddl", "gripper", "0"), ValueError, r"Instance.seed"),
    ("instance task", lambda t: Instance("pddl", "", 0), ValueError, r"Instance.task"),
    ("instance options type", lambda t: Instance("pddl", "gripper", 0, {"size": 3}), ValueError,
     r"Instance.options must be a tuple"),
    ("instance options twice", lambda t: Instance("pddl", "gripper", 0, (("size", 3), ("size", 4))),
     ValueError, r"option twice"),
]

SYNTHESIS_CONFIG = [(f"SynthesisConfig.{field}", lambda t, f=field, v=value: SynthesisConfig(**{f: v}),
                     ValueError, rf"SynthesisConfig\.{field}")
                    for field, value in [("teacher", "gpt"), ("n", 0), ("n", "5"), ("seed", 1.5),
                                         ("error_rate", "0.3"), ("error_rate", 1.5), ("max_candidates", -1),
                                         ("max_candidates", 2.0), ("strict", "yes"), ("llm_thoughts", 1),
                                         ("personas", ""), ("script_attempts", 0), ("min_errors", True)]]

LLM_CONFIG = [(f"LLMConfig.{field}", lambda t, f=field, v=value: LLMConfig(**{"model": "m", f: v}),
               ValueError, rf"LLMConfig\.{field}")
              for field, value in [("model", ""), ("base_url", "localhost:8000"), ("temperature", 3),
                                   ("max_tokens", 0), ("timeout", 0), ("concurrency", 1.5),
                                   ("api_key_env", ""), ("extra", {"model": "x"}),
                                   ("price_per_1m_input", -1.0)]]

SYNTHESIZE = [
    ("config type", lambda t: synthesize({"n": 3}, t / "run", progress=False), ValueError,
     r"config must be a SynthesisConfig"),
    ("no client", lambda t: synthesize(SynthesisConfig(teacher="openai"), t / "run", progress=False),
     ValueError, r"teacher 'openai' needs an LLM client"),
    ("client type", lambda t: synthesize(SynthesisConfig(llm_thoughts=True), t / "run", client="gpt-4o",
                                         progress=False),
     ValueError, r"client must be a refinelib.synth.llm.LLMClient"),
    ("out_dir a file", lambda t: synthesize(SynthesisConfig(), write(t, "run", "x"), progress=False),
     ValueError, r"out_dir .*run is a file"),
    ("persona file missing", lambda t: synthesize(
        SynthesisConfig(teacher="openai", personas=str(t / "persona.jsonl")), t / "run",
        client=local_client(t), progress=False), FileNotFoundError, r"persona.jsonl"),
    ("persona file empty", lambda t: synthesize(
        SynthesisConfig(teacher="openai", personas=str(write(t, "persona.jsonl", "\n \n"))), t / "run",
        client=local_client(t), progress=False), ValueError, r"persona.jsonl: no personas"),
]

LOADERS = [
    ("LLMClient config", lambda t: LLMClient({"model": "m"}), ValueError, r"config must be an LLMConfig"),
    ("run folder", lambda t: load_run(t), FileNotFoundError, r"config.json: not a synthesis run folder"),
    ("run config", lambda t: load_run(write(t, "config.json", "[1]").parent), ValueError,
     r"config.json: not a synthesis run's config"),
    ("persona hub empty", lambda t: personas.load_persona_hub(write(t, "p.jsonl", "")), ValueError,
     r"p.jsonl: no personas"),
    ("persona hub bad JSON", lambda t: personas.load_persona_hub(
        write(t, "p.jsonl", '{"persona": "A cook"}\n{"persona": \n')),
     ValueError, r"p.jsonl:2: not valid JSON"),
    ("persona hub not UTF-8",
     lambda t: personas.load_persona_hub(write(t, "p.jsonl", b'{"persona": "\xff"}\n')), ValueError,
     r"p.jsonl:1: not UTF-8"),
    ("persona hub field", lambda t: personas.load_persona_hub(write(t, "p.jsonl", '{"persona": 3}\n')),
     ValueError, r"p.jsonl:1: field 'persona'"),
    ("persona hub missing", lambda t: personas.load_persona_hub(t / "none.jsonl"), FileNotFoundError,
     r"none.jsonl"),
    ("chat bad line", lambda t: chat.load_jsonl(write(t, "c.jsonl", json.dumps(RECORD) + "\n{\n")),
     RecordError, r"c.jsonl:2: not valid JSON"),
    ("chat not UTF-8", lambda t: chat.load_jsonl(write(t, "c.jsonl", b"\xfe\xff\n")), RecordError,
     r"c.jsonl:1: not UTF-8"),
    ("chat record",
     lambda t: chat.load_jsonl(write(t, "c.jsonl", json.dumps({"id": "a", "conversations": 3}))), RecordError,
     r"c.jsonl:1: .*conversations"),
    ("dataset split", lambda t: dataset.load(t, split="test"), ValueError, r"split must be one of"),
    ("dataset missing", lambda t: dataset.load(t / "none"), FileNotFoundError,
     r"dataset directory not found"),
    ("dataset stats", lambda t: dataset.info(write(t, "stats.json", "{}").parent), ValueError,
     r"stats.json: not a dataset's stats.json \(field 'name' is missing\)"),
    ("save no records", lambda t: dataset.save([], t / "d", name="x"), ValueError, r"no records"),
    ("save name", lambda t: dataset.save([RECORD], t / "d", name=""), ValueError, r"dataset name"),
    ("save records type", lambda t: dataset.save(RECORD, t / "d", name="x"), ValueError, r"records must be"),
    ("save val_fraction", lambda t: dataset.save([RECORD], t / "d", name="x", val_fraction="0.1"), ValueError,
     r"val_fraction"),
    ("save seed", lambda t: dataset.save([RECORD], t / "d", name="x", seed="0"), ValueError, r"seed"),
    ("save meta", lambda t: dataset.save([RECORD], t / "d", name="x", meta=[1]), ValueError,
     r"meta must map"),
    ("save into a file", lambda t: dataset.save([RECORD], write(t, "d", "x"), name="x"), ValueError,
     r"out_dir .*d is a file"),
]

CASES = ENVIRONMENTS + SYNTHESIS_CONFIG + LLM_CONFIG + SYNTHESIZE + LOADERS


@pytest.mark.parametrize("call,error,pattern", [pytest.param(*row[1:], id=row[0]) for row in CASES])
def test_bad_input_is_one_clear_error_before_any_work(tmp_path, call, error, pattern):
    INPUTS.clear()
    with pytest.raises(error, match=pattern):
        call(tmp_path)
    made = set(tmp_path.rglob("*")) - INPUTS
    assert not made, f"work was done before the error: {sorted(map(str, made))}"
