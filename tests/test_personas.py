"""Personas (method.md §3): the offline generator and the Persona Hub loader."""

import json
import re

import pytest

from refinelib.synth import personas
from refinelib.synth.personas import Persona, generate, load_persona_hub, pool_size, sample


def test_pool_is_large_and_sentences_read_like_persona_hub():
    everything = generate(pool_size(), seed=0)
    assert pool_size() >= 5000
    texts = [p.text for p in everything]
    assert len(set(texts)) == len(texts) == pool_size()
    assert len({p.id for p in everything}) == pool_size()  # ids do not collide
    for text in texts:
        assert re.fullmatch(r"(A [^aeiouAEIOU]|An [aeiouAEIOU])[^.]* who .+ and .+", text), text
        assert "  " not in text and 8 <= len(text.split()) <= 30
    occupations = {t.split(" who ")[0] for t in texts}
    assert len(occupations) == len(personas.word_lists()["occupations"]) >= 30


def test_generate_is_deterministic_distinct_and_prefix_stable():
    a, b = generate(200, seed=3), generate(200, seed=3)
    assert a == b and len({p.text for p in a}) == 200
    assert generate(50, seed=3) == a[:50]
    other = generate(200, seed=4)
    assert [p.text for p in other] != [p.text for p in a]
    assert all(p.source == "generated" and re.fullmatch(r"gen-[0-9a-f]{12}", p.id) for p in a)
    assert generate(0) == []
    # the id depends only on the text, so the same persona has the same id under any seed
    by_text = {p.text: p.id for p in generate(pool_size(), seed=9)}
    assert all(by_text[p.text] == p.id for p in a)


def test_generate_beyond_the_pool_names_the_pool_size():
    with pytest.raises(ValueError, match=f"pool has {pool_size()} distinct"):
        generate(pool_size() + 1)
    with pytest.raises(ValueError, match="n=-1"):
        generate(-1)


def test_sample_without_replacement_and_seeded():
    pool = generate(100, seed=1)
    picked = sample(pool, 30, seed=2)
    assert len(set(picked)) == 30 and set(picked) <= set(pool)
    assert sample(pool, 30, seed=2) == picked and sample(pool, 30, seed=5) != picked
    with pytest.raises(ValueError, match="n=101 is outside 0..100"):
        sample(pool, 101)


def test_load_persona_hub_reads_both_fields_skips_blanks_and_drops_duplicates(tmp_path):
    path = tmp_path / "persona.jsonl"
    lines = [json.dumps({"persona": "A recent graduate joining the IT department and eager to learn UNIX"}),
             "",
             json.dumps({"input persona": "A Political Analyst specialized in El Salvador's politics.",
                         "synthesized text": "..."}),
             "   ",
             json.dumps({"persona": "A recent graduate joining the IT department and eager to learn UNIX"}),
             json.dumps({"persona": "  A beekeeper in Provence  "})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="dropped 1 duplicate persona"):
        loaded = load_persona_hub(path)
    assert [p.text for p in loaded] == [
        "A recent graduate joining the IT department and eager to learn UNIX",
        "A Political Analyst specialized in El Salvador's politics.",
        "A beekeeper in Provence"]
    assert all(isinstance(p, Persona) and p.source == "personahub" and p.id.startswith("ph-") for p in loaded)
    with pytest.warns(UserWarning):
        again = load_persona_hub(tmp_path / "persona.jsonl")
    assert [p.id for p in again] == [p.id for p in loaded]  # stable ids


@pytest.mark.parametrize(("line", "message"), [
    ('{"persona": ', "persona.jsonl:2: not valid JSON"),
    ('{"text": "A chef"}', "persona.jsonl:2: needs a non-empty string field 'persona'"),
    ('{"persona": 7}', "persona.jsonl:2: field 'persona' must be a non-empty string"),
    ('{"input persona": "  "}', "persona.jsonl:2: field 'input persona' must be a non-empty string"),
    ('["A chef"]', "persona.jsonl:2: needs a non-empty string field"),
])
def test_load_persona_hub_bad_line_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "persona.jsonl"
    path.write_text('{"persona": "A chef"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_persona_hub(path)


def test_load_persona_hub_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_persona_hub(tmp_path / "nope.jsonl")
