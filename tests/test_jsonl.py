"""Append-only JSONL logs: a kill tears at most the line being written, in any encoding."""

from __future__ import annotations

import json

import pytest

from refinelib import jsonl
from refinelib.synth.synthesis import SAMPLES_FILE, SynthesisConfig, load_run, synthesize

# Characters of 1, 2, 3 and 4 UTF-8 bytes: a kill can land inside each multi-byte one.
TEXTS = ["plain ascii", "café crème", "日本語のテキスト", "emoji 🙂🚀"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_line_torn_inside_any_character_is_skipped_and_counted(tmp_path, text):
    path = tmp_path / "log.jsonl"
    jsonl.append(path, [{"i": 0, "t": text}])
    line = (json.dumps({"i": 1, "t": text}, ensure_ascii=False) + "\n").encode()
    for cut in range(1, len(line) - 1):  # every byte position, inside characters included
        torn = tmp_path / f"torn{cut}.jsonl"
        torn.write_bytes(path.read_bytes() + line[:cut])
        assert jsonl.read(torn) == ([{"i": 0, "t": text}], 1), cut
        jsonl.append(torn, [{"i": 2}])  # the resumed run appends after the fragment, on a fresh line
        assert jsonl.read(torn) == ([{"i": 0, "t": text}, {"i": 2}], 1), cut


def test_read_numbered_gives_line_numbers_of_the_file(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": \xe6\x97\n{"c": 3}\n')
    assert jsonl.read_numbered(path) == ([(1, {"a": 1}), (4, {"c": 3})], 1)


def test_input_files_name_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "input.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(ValueError, match=r"input.jsonl:2: not UTF-8"):
        list(jsonl.numbered(path))


def test_a_synthesis_run_killed_inside_a_multibyte_character_resumes(tmp_path):
    config = SynthesisConfig(n=3, seed=2)
    full = synthesize(config, tmp_path / "full", progress=False)
    synthesize(SynthesisConfig(n=1, seed=2), tmp_path / "run", progress=False)
    samples = tmp_path / "run" / SAMPLES_FILE
    line = json.dumps({"index": 1, "persona": "Zoë 🙂"}, ensure_ascii=False).encode()
    samples.write_bytes(samples.read_bytes() + line[: line.index("🙂".encode()) + 2])
    assert load_run(tmp_path / "run").skipped_lines == 1
    resumed = synthesize(config, tmp_path / "run", progress=False)
    assert [s.record() for s in resumed.accepted] == [s.record() for s in full.accepted]


@pytest.mark.parametrize("line,why", [('{"index": 0}', "missing"), ("[1, 2]", "not an object"),
                                      ('{"index": -1, "id": "x", "teacher": "grounded", "accepted": false, '
                                       '"verdicts": []}', "index")])
def test_a_complete_line_that_is_not_a_sample_names_its_line(tmp_path, line, why):
    synthesize(SynthesisConfig(n=1), tmp_path, progress=False)
    with (tmp_path / SAMPLES_FILE).open("a") as f:
        f.write(line + "\n")
    lines = len((tmp_path / SAMPLES_FILE).read_text().splitlines())
    with pytest.raises(ValueError, match=rf"{SAMPLES_FILE}:{lines}: not a synthesis sample .*{why}"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match=rf"{SAMPLES_FILE}:{lines}:"):
        synthesize(SynthesisConfig(n=1), tmp_path, progress=False)
