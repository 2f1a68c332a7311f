"""Every command in the README, book/run_it_yourself.md and docs/scaling.md names things that exist.

The fenced ``bash`` blocks are parsed into commands (continuation lines joined, comments dropped) and each
is checked the way it would fail when typed: files it reads exist, ``-p name`` papermill parameters are
in the named notebook's parameters cell, ``--flags`` are in the named module's or script's ``--help`` (or
accelerate's own launch parser), ``PROFILE=<name>`` and ``--profile <name>`` are folders under configs/,
``make`` targets are in the Makefile and ``pip install`` extras are in pyproject.toml. Tools that are not
ours (vLLM, git, huggingface-cli) are only recognised; a command of an unknown kind fails the test, so a
new kind of command is classified before it is trusted.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from refinelib.report import runbook

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "book/run_it_yourself.md", "docs/scaling.md"]
EXTERNAL = {"vllm", "git", "huggingface-cli", "conda", "apt-get", "cd", "export", "source", "nvidia-smi"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[list[str]]:
    """The commands of a block as token lists (continuations joined, comments and `&&` split off)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            out.append(tokens[:cut])
            tokens = tokens[cut + 1:]
    return [c for c in out if c]


def all_commands() -> list[tuple[str, list[str]]]:
    return [(doc, c) for doc in DOCS for block in bash_blocks((ROOT / doc).read_text())
            for c in commands(block)]


def placeholder(token: str) -> bool:
    return "<" in token or "..." in token


@functools.cache
def help_text(*how: str) -> str:
    done = subprocess.run([sys.executable, *how, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, f"{' '.join(how)} --help failed: {done.stderr[-1000:]}"
    return done.stdout


def flags_of(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]


def check_flags(tokens: list[str], how: tuple[str, ...], problems: list[str], where: str) -> None:
    text = help_text(*how)
    for flag in flags_of(tokens):
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
            problems.append(f"{where}: {flag} is not an option of {' '.join(how)}")


def check_file(token: str, problems: list[str], where: str) -> None:
    if not placeholder(token) and not (ROOT / token).exists():
        problems.append(f"{where}: {token} does not exist")


def check_profile(name: str, problems: list[str], where: str) -> None:
    if not placeholder(name) and not (ROOT / "configs" / name).is_dir():
        problems.append(f"{where}: profile {name!r} has no folder configs/{name}/")


def check_notebook_run(args: list[str], problems: list[str], where: str) -> None:
    """``NB OUT [-p name value]...`` (papermill and refinelib.report.runbook): the notebook and its
    parameters."""
    notebook = args[0]
    check_file(notebook, problems, where)
    if not (ROOT / notebook).is_file():
        return
    names = runbook.notebook_parameters(ROOT / notebook)
    for i, token in enumerate(args):
        if token == "-p":
            if args[i + 1] not in names:
                problems.append(f"{where}: -p {args[i + 1]} is not a parameter of {notebook}")
            if i + 2 >= len(args):
                problems.append(f"{where}: -p {args[i + 1]} has no value")
        if token == "--profile":
            check_profile(args[i + 1], problems, where)


def check_python(args: list[str], problems: list[str], where: str) -> None:
    """``python -m module ...`` / ``python script.py ...`` / ``python -c ...`` / ``python -m venv|pip``."""
    if args[0] == "-c":
        return
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        if module == "venv":
            return
        if module == "pip":
            check_pip(rest, problems, where)
            return
        path = ROOT / (module.replace(".", "/") + ".py")
        main = ROOT / module.replace(".", "/") / "__main__.py"  # a package run with -m
        if not path.is_file() and not main.is_file():
            problems.append(f"{where}: no module {module} in this repository")
            return
        if module == "refinelib":  # python -m refinelib <stage> ...: the stage's own flags
            check_flags(rest[1:], ("-m", module, rest[0]), problems, where)
        else:
            check_flags(rest, ("-m", module), problems, where)
        if module == "refinelib.report.runbook":
            check_notebook_run(rest, problems, where)
        if module == "refinelib.tune.train_cli" and "--config" in rest:
            check_file(rest[rest.index("--config") + 1], problems, where)
        return
    check_file(args[0], problems, where)
    if (ROOT / args[0]).is_file():
        check_flags(args[1:], (args[0],), problems, where)


def check_pip(args: list[str], problems: list[str], where: str) -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for i, token in enumerate(args):
        wanted = re.fullmatch(r"\.\[([\w,-]+)\]", token)
        unknown = set(wanted.group(1).split(",")) - extras if wanted else set()
        if unknown:
            problems.append(f"{where}: extras {unknown} not in pyproject.toml")
        if token == "-c":
            check_file(args[i + 1], problems, where)


def check_accelerate(args: list[str], problems: list[str], where: str) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert args[0] == "launch", f"{where}: accelerate {args[0]}"
    at = args.index("-m")
    options = launch_command_parser()._option_string_actions
    for i, token in enumerate(args[1:at], 1):
        if token.startswith("--") and token.split("=", 1)[0] not in options:
            problems.append(f"{where}: {token} is not an option of accelerate launch")
        if token == "--config_file":
            check_file(args[i + 1], problems, where)
    check_python(args[at:], problems, where)


def check_command(doc: str, tokens: list[str]) -> list[str]:
    """The problems of one command (empty when everything it names exists)."""
    problems: list[str] = []
    where = f"{doc}: `{shlex.join(tokens)[:90]}`"
    while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):  # VAR=value before the command
        name, value = tokens.pop(0).split("=", 1)
        if name == "PROFILE":
            check_profile(value, problems, where)
    program, args = tokens[0], tokens[1:]
    if program == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
        for arg in args:
            if "=" in arg:
                name, value = arg.split("=", 1)
                if name == "PROFILE":
                    check_profile(value, problems, where)
            elif arg not in targets:
                problems.append(f"{where}: no make target {arg!r}")
    elif program in {"papermill", ".venv/bin/papermill"}:
        check_notebook_run(args, problems, where)
        unknown = [f for f in flags_of(args) if f not in {"--cwd", "--kernel"}]
        problems += [f"{where}: {f} is not a papermill option here" for f in unknown]
    elif program in PYTHONS:
        check_python(args, problems, where)
    elif program in {"accelerate", ".venv/bin/accelerate"}:
        check_accelerate(args, problems, where)
    elif program in {"pip", ".venv/bin/pip"}:
        check_pip(args, problems, where)
    elif program in EXTERNAL:
        pass
    else:
        problems.append(f"{where}: unknown kind of command {program!r} (add it to this test)")
    return problems


def test_the_docs_have_commands_to_check():
    found = all_commands()
    assert {doc for doc, _ in found} == set(DOCS)
    assert any(c[:2] == ["accelerate", "launch"] and "configs/paper/train_refine.yaml" in c for _, c in found)
    assert any(c[0] == "vllm" and "--enable-lora" in c and "--enable-prefix-caching" in c for _, c in found)


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_names_files_parameters_flags_and_profiles_that_exist(doc):
    problems = [p for d, tokens in all_commands() if d == doc for p in check_command(d, list(tokens))]
    assert not problems, "\n".join(problems)


def test_the_scaling_notes_show_the_paper_training_yaml_as_it_is():
    text = (ROOT / "docs" / "scaling.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (ROOT / "configs" / "paper" / "train_refine.yaml").read_text()


@pytest.mark.parametrize("command, problem", [
    ("PROFILE=gpu make book", "profile 'gpu' has no folder"),
    ("make bok", "no make target 'bok'"),
    (".venv/bin/papermill notebooks/00_environments.ipynb out.ipynb -p scales agentboard",
     "-p scales is not a parameter of notebooks/00_environments.ipynb"),
    (".venv/bin/papermill notebooks/00_environment.ipynb out.ipynb", "00_environment.ipynb does not exist"),
    ("python -m refinelib.report.runbook notebooks/00_environments.ipynb out.ipynb --profiles paper",
     "--profiles is not an option of -m refinelib.report.runbook"),
    ("accelerate launch --config_file configs/accelerate/zero3.yaml -m refinelib.tune.train_cli",
     "configs/accelerate/zero3.yaml does not exist"),
    ("accelerate launch --num_nodes 4 -m refinelib.tune.train_cli",
     "--num_nodes is not an option of accelerate"),
    ("accelerate launch -m refinelib.tune.train_cli --config configs/paper/train.yaml --learning_rat 1",
     "--learning_rat is not an option of -m refinelib.tune.train_cli"),
    ("python -m refinelib synth runs/x --teachr grounded", "--teachr is not an option of -m refinelib synth"),
    ("pip install -e '.[al]'", "extras {'al'} not in pyproject.toml"),
    ("curl http://example.com", "unknown kind of command 'curl'"),
])
def test_the_checker_catches_what_a_reader_would_trip_on(command, problem):
    problems = check_command("doc", shlex.split(command))
    assert any(problem in p for p in problems), problems


def test_the_checker_accepts_what_exists():
    good = (".venv/bin/python -m refinelib.report.runbook notebooks/02_refinement_synthesis.ipynb out.ipynb "
            "--profile paper --rehearse -p n_trajectories 8")
    assert check_command("doc", shlex.split(good)) == []
