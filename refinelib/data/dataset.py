"""Tuning datasets: chat records split, saved, described and loaded back (method.md §7).

``save`` writes one directory that the synthesis notebook produces and the tuning notebook reads::

    train.jsonl, validation.jsonl   the released AgentRefine schema {id, conversations: [{from, loss, value}]}
    hf/                             the same records as a Hugging Face DatasetDict (save_to_disk), with the
                                    metadata (theme, source, error_kinds, templates, ...) as flat columns
    stats.json, README.md           statistics and a dataset card in the Hugging Face style

Everything is written into a temporary sibling directory that is renamed into place at the end, so a killed
run leaves the previous dataset or none, never a half one.

>>> records = [{"id": f"r{i}", "conversations": [{"from": "human", "loss": False, "value": "hi"},
...                                              {"from": "gpt", "loss": True, "value": "Action: look"}]}
...            for i in range(10)]
>>> train, validation = split(records, 0.2, seed=0)
>>> len(train) + len(validation), len(validation) > 0
(10, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from refinelib.data import chat
from refinelib.paths import dataset_dir
from refinelib.schema import RecordError, erroneous_turns

SPLITS = ("train", "validation")
CHARS_PER_TOKEN = 4  # a rough English average; the card calls these "approx tokens"


@dataclass
class DatasetInfo:
    """What :func:`save` wrote: where, the split sizes, and a content fingerprint of the JSONL files."""

    path: Path
    name: str
    counts: dict[str, int]
    fingerprint: str                # sha256 of train.jsonl + validation.jsonl bytes
    description: str = ""
    stats: dict[str, dict] = field(default_factory=dict)  # per split and "all", as stats()


# ------------------------------------------------------------------------------------------- split


def _unit(seed: int, rid: str) -> float:
    """A stable pseudo-random number in [0, 1) for (seed, id): a record's split never depends on others."""
    return int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:16], 16) / 2**64


def _check_ids(records: Sequence[Mapping]) -> None:
    seen = set()
    for record in records:
        if record["id"] in seen:
            raise RecordError(f"duplicate record id {record['id']!r}: ids must be unique within a dataset")
        seen.add(record["id"])


def split(records: Sequence[Mapping], val_fraction: float, seed: int) -> tuple[list, list]:
    """Split records into (train, validation) by a hash of (seed, id), each keeping the input order.

    A record goes to validation when its hash falls below ``val_fraction``, so the validation size is
    ``val_fraction`` of the records on average (not exactly) and adding records never moves existing
    ones. When ``val_fraction > 0`` and there are at least two
    records, both splits are non-empty (for tiny sets the record with the lowest/highest hash is moved).

    Raises:
        ValueError: ``val_fraction`` outside [0, 1); RecordError: a duplicate id.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) \
            or not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    _check_ids(records)
    units = {r["id"]: _unit(seed, r["id"]) for r in records}
    in_val = {rid for rid, u in units.items() if u < val_fraction}
    if val_fraction > 0 and len(records) >= 2:
        if not in_val:
            in_val.add(min(units, key=units.get))
        if len(in_val) == len(records):
            in_val.discard(max(units, key=units.get))
    return ([r for r in records if r["id"] not in in_val], [r for r in records if r["id"] in in_val])


# ------------------------------------------------------------------------------------------- stats


def _spread(values: list[int]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def stats(records: Sequence[Mapping], meta: Mapping[str, Mapping] | None = None) -> dict:
    """Statistics of records (and of their metadata, when given) for the card and the notebooks.

    Erroneous turns are ``gpt`` turns with ``loss`` false. From ``meta[id]``: ``error_kinds`` (one kind per
    erroneous turn), ``theme``, ``source`` and ``templates`` (action templates; or ``n_templates``).
    """
    n = len(records)
    convs = [r["conversations"] for r in records]
    turns = [len(c) for c in convs]
    assistant = [sum(t["from"] == "gpt" for t in c) for c in convs]
    erroneous = [len(erroneous_turns(r)) for r in records]
    chars = sum(len(t["value"]) for c in convs for t in c)
    out = {"records": n,
           **{f"turns_{k}": v for k, v in _spread(turns).items()},
           **{f"assistant_turns_{k}": v for k, v in _spread(assistant).items()},
           **{f"erroneous_turns_{k}": v for k, v in _spread(erroneous).items()},
           "erroneous_turns": sum(erroneous),
           "records_with_erroneous_turns": sum(e > 0 for e in erroneous),
           "characters": chars,
           "approx_tokens": round(chars / CHARS_PER_TOKEN),
           "approx_tokens_per_record": chars / CHARS_PER_TOKEN / n if n else None}
    if not meta:
        return out
    rows = [meta.get(r["id"]) or {} for r in records]
    if any("error_kinds" in m for m in rows):
        kinds = Counter(k for m in rows for k in m.get("error_kinds") or [])
        out["errors_per_trajectory_by_kind"] = {k: kinds[k] / n for k in sorted(kinds)}
    for key, name in (("theme", "themes"), ("source", "sources")):
        if any(m.get(key) for m in rows):
            values = Counter(m[key] for m in rows if m.get(key))
            out[name] = {k: values[k] for k in sorted(values)}
    counts = [len(m["templates"]) if "templates" in m else m.get("n_templates") for m in rows]
    if any(c is not None for c in counts):
        spread = _spread([c for c in counts if c is not None])
        out.update({f"templates_per_record_{k}": v for k, v in spread.items()})
    if any("templates" in m for m in rows):
        out["distinct_templates"] = len({t for m in rows for t in m.get("templates") or []})
    return out


def stats_table(per_split: Mapping[str, Mapping]) -> pd.DataFrame:
    """``{split: stats(...)}`` as one table: a row per statistic, a column per split.

    Nested counts become ``name[key]`` rows; a key a split lacks counts 0 there (a statistic a split lacks
    altogether, such as themes without metadata, stays empty).
    """
    rows: dict[str, dict] = {}
    for key in dict.fromkeys(k for st in per_split.values() for k in st):  # first-seen order
        nested = [st[key] for st in per_split.values() if isinstance(st.get(key), Mapping)]
        if not nested:
            rows[key] = {name: st.get(key) for name, st in per_split.items()}
            continue
        for sub in sorted({sub for counts in nested for sub in counts}):
            rows[f"{key}[{sub}]"] = {name: st[key].get(sub, 0) if isinstance(st.get(key), Mapping) else None
                                     for name, st in per_split.items()}
    # object dtype keeps counts as ints next to means
    return pd.DataFrame([list(r.values()) for r in rows.values()], columns=list(per_split), dtype=object,
                        index=pd.Index(list(rows), name="statistic"))


# -------------------------------------------------------------------------------------------- save


def _hf_dataset(train: list[dict], validation: list[dict], meta: Mapping[str, Mapping] | None):
    """A DatasetDict with id, conversations (the released features) and one column per metadata key."""
    from datasets import Dataset, DatasetDict, Features, List, Value  # the "ml" extra; heavy to import

    records = train + validation
    keys = list(dict.fromkeys(k for r in records for k in (meta or {}).get(r["id"]) or {}))
    clash = sorted(set(keys) & {"id", "conversations"})
    if clash:
        raise ValueError(f"meta key {clash[0]!r} would overwrite a record field; rename it")
    rows = [{"id": r["id"], "conversations": r["conversations"],
             **{k: ((meta or {}).get(r["id"]) or {}).get(k) for k in keys}} for r in records]
    # mixed-type metadata (an int here, a string there) becomes a Json column instead of an error
    full = Dataset.from_list(rows, on_mixed_types="use_json")
    features = Features({**full.features, "id": Value("string"), "conversations": List(
        {"from": Value("string"), "loss": Value("bool"), "value": Value("string")})})
    if features != full.features:
        full = full.cast(features)
    # index lists, not ranges: datasets rejects an empty contiguous range at the end of the table
    return DatasetDict({"train": full.select(list(range(len(train)))),
                        "validation": full.select(list(range(len(train), len(records))))})


def _save_hf(dataset_dict, path: Path) -> None:
    """``save_to_disk`` without its progress bars (they clutter notebooks), restoring the setting after."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        # datasets 5.2 writes no shard for an empty split, and load_from_disk then fails on it: force one
        dataset_dict.save_to_disk(str(path), num_shards={k: 1 for k, d in dataset_dict.items() if not len(d)})
    finally:
        if not was_disabled:
            enable_progress_bars()


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join([df.index.name or "", *map(str, df.columns)]) + " |",
             "|" + "---|" * (len(df.columns) + 1)]
    lines += ["| " + " | ".join([str(label), *map(_cell, row)]) + " |"
              for label, row in zip(df.index, df.astype(object).itertuples(index=False), strict=True)]
    return "\n".join(lines)


def card(info: DatasetInfo) -> str:
    """The dataset card (README.md): a Hugging Face YAML header, the schema, files and statistics."""
    header = {"pretty_name": info.name, "language": ["en"], "task_categories": ["text-generation"],
              "tags": ["agents", "agentrefine", "refinement-tuning", "synthetic"],
              "size_categories": [_size_category(sum(info.counts.values()))],
              "configs": [{"config_name": "default",
                           "data_files": [{"split": s, "path": f"{s}.jsonl"} for s in SPLITS]}],
              "dataset_info": {"splits": [{"name": s, "num_examples": info.counts[s]} for s in SPLITS]}}
    return f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# {info.name}

{info.description or "Refinement-tuning data in the AgentRefine schema."}

Records follow the released AgentRefine schema: `id: string`, `conversations: list<struct{{from: string,
loss: bool, value: string}}>`. `from` is `human`, `gpt` or (first turn only) `system`; `loss` is true on
trained `gpt` turns and false on erroneous `gpt` turns (the player's mistakes, corrected in the next turns)
and on every other turn.

Files: `train.jsonl` and `validation.jsonl` (one record a line), `hf/` (a `datasets.DatasetDict`:
`datasets.load_from_disk`, with the metadata as extra columns), `stats.json`.
Load with `refinelib.data.dataset.load(path, split)` or `refinelib.data.dataset.load_hf(path)`.

Fingerprint (sha256 of train.jsonl + validation.jsonl): `{info.fingerprint}`

## Statistics

Turns count every message; erroneous turns are `gpt` turns with `loss` false; tokens are approximated as
characters / {CHARS_PER_TOKEN}.

{_markdown(stats_table(info.stats))}
"""


def save(records: Sequence[Mapping], out_dir: str | Path, *, val_fraction: float = 0.1, seed: int = 0,
         meta: Mapping[str, Mapping] | None = None, name: str, description: str = "") -> DatasetInfo:
    """Split and write a dataset directory (see the module docstring); replaces a previous dataset there.

    Args:
        records: chat records in any layout :func:`refinelib.data.chat.normalize_record` accepts.
        out_dir: the dataset directory (created; an existing one must be a dataset or empty).
        val_fraction, seed: the :func:`split`.
        meta: metadata per record id (e.g. ``Sample.meta()``): HF columns and card statistics.
        name, description: for the card.

    Raises:
        RecordError: a malformed record or a duplicate id (named); ValueError: no records, a bad argument
        (named), or a bad meta key; all before anything is written.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not isinstance(description, str):
        raise ValueError(f"dataset {name!r}: description must be a string, got {type(description).__name__}")
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
        raise ValueError(f"dataset {name!r}: records must be a sequence of chat records, "
                         f"got {type(records).__name__}")
    if meta is not None and not (isinstance(meta, Mapping)
                                 and all(isinstance(m, Mapping) for m in meta.values())):
        raise ValueError(f"dataset {name!r}: meta must map record ids to dicts of metadata")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"dataset {name!r}: out_dir {out_dir} is a file, not a directory")
    records = [chat.normalize_record(r) for r in records]
    if not records:
        raise ValueError(f"dataset {name!r}: no records to save")
    train, validation = split(records, val_fraction, seed)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "stats.json").is_file():
        raise FileExistsError(f"refusing to replace {out_dir}: it is not empty and not a saved dataset "
                              "(no stats.json)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        digest = hashlib.sha256()
        for split_name, rows in zip(SPLITS, (train, validation), strict=True):
            chat.write_jsonl(rows, tmp / f"{split_name}.jsonl")
            digest.update((tmp / f"{split_name}.jsonl").read_bytes())
        _save_hf(_hf_dataset(train, validation, meta), tmp / "hf")
        info = DatasetInfo(out_dir, name, {"train": len(train), "validation": len(validation)},
                           digest.hexdigest(), description,
                           {"train": stats(train, meta), "validation": stats(validation, meta),
                            "all": stats(records, meta)})
        (tmp / "stats.json").write_text(json.dumps(
            {"name": name, "description": description, "counts": info.counts, "fingerprint": info.fingerprint,
             "val_fraction": val_fraction, "seed": seed, "splits": info.stats}, indent=2, ensure_ascii=False),
            encoding="utf-8")
        (tmp / "README.md").write_text(card(info), encoding="utf-8")
        old = tmp.with_name(tmp.name + "-old")  # unique, like tmp
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def save_synthesis_datasets(data_run_id: str, records: Sequence[Mapping], meta: Mapping[str, Mapping],
                            expert_records: Sequence[Mapping], expert_meta: Mapping[str, Mapping], *,
                            teacher: str, val_fraction: float = 0.1, seed: int = 0) -> dict[str, DatasetInfo]:
    """The synthesis run's three datasets, each saved in :func:`refinelib.paths.dataset_dir`: ``refinement``
    (the refinement trajectories), ``refinement_stripped`` (the same without their erroneous turns and
    feedback: the paper's "w/o refinement data") and ``expert`` (the expert-only baseline's data)."""
    def one(name: str, rows: Sequence[Mapping], rows_meta: Mapping, description: str) -> DatasetInfo:
        return save(rows, dataset_dir(data_run_id, name), meta=rows_meta, name=name,
                    val_fraction=val_fraction, seed=seed, description=description)

    return {
        "refinement": one("refinement", records, meta,
                          f"AgentRefine-style refinement trajectories ({teacher} teacher)"),
        "refinement_stripped": one("refinement_stripped", [chat.strip_errors(r) for r in records], meta,
                                   "the same trajectories without error turns"),
        "expert": one("expert", expert_records, expert_meta,
                      "expert-only oracle episodes on held-in household tasks"),
    }


# -------------------------------------------------------------------------------------------- load


def _existing(out_dir: str | Path, name: str) -> Path:
    directory = Path(out_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {directory}")
    if not (directory / name).exists():
        raise FileNotFoundError(f"dataset file not found: {directory / name}")
    return directory / name


def load(out_dir: str | Path, split: str = "train") -> list[dict]:
    """The normalised records of one split (``train`` or ``validation``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return chat.load_jsonl(_existing(out_dir, f"{split}.jsonl"))


def load_hf(out_dir: str | Path):
    """The saved ``datasets.DatasetDict`` (train, validation) with its metadata columns."""
    from datasets import load_from_disk

    return load_from_disk(str(_existing(out_dir, "hf")))


def info(out_dir: str | Path) -> DatasetInfo:
    """The :class:`DatasetInfo` of a saved dataset, read from its ``stats.json``."""
    path = _existing(out_dir, "stats.json")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return DatasetInfo(Path(out_dir), saved["name"], saved["counts"], saved["fingerprint"],
                           saved["description"], saved["splits"])
    except (ValueError, KeyError, TypeError) as error:
        why = f"field {error} is missing" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{path}: not a dataset's stats.json ({why})") from None
