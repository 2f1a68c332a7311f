"""Every notebook runs in smoke mode through papermill; the book built from those runs is opened in Chromium.

The smoke runs are cached per notebook for this module, so ``-k 02`` runs one notebook and the book
tests reuse the runs of the notebook tests. A fake API key is set in the environment of every run: the
rendered site must not contain it (nor any other secret-looking environment value).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from refinelib.report import runbook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FAKE_KEY = "sk-test-BOOK-SECRET-8c1f0e"
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.I)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Jupyter Book 1.0.4 registers sphinx-thebe's inline config script twice per page; the second `const`
# throws. Harmless (thebe is off here) and not ours to fix; every other page error fails the test.
KNOWN_PAGE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("book")


_RUNS: dict[str, dict] = {}
GATHERING = ("08_results", "09_reproducibility")  # the chapters that gather this build's outputs


@contextlib.contextmanager
def environment(**env: str):
    """``os.environ`` with ``env`` set (the kernels papermill starts inherit it), restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def smoke_run(path: Path, workdir: Path) -> dict:
    """Execute one notebook in smoke mode into ``workdir/book/executed`` (once per module), as ``make book``
    does: the manifests it writes name it (REFINELIB_NOTEBOOK)."""
    if path.stem not in _RUNS:
        executed = workdir / "book" / "executed"
        params = {"smoke": True, "run_id": "smoke"}
        if path.stem in GATHERING:  # gather the smoke runs of this module's chapters
            params["executed_dir"] = str(executed)
            plant_leftovers(workdir / "artifacts")
        if path.stem == "08_results":
            params.update(data_run_id="smoke", tuning_run_id="smoke", chapter_run_id="smoke")
        with environment(REFINELIB_ARTIFACTS=str(workdir / "artifacts"), OPENAI_API_KEY=FAKE_KEY,
                         REFINELIB_NOTEBOOK=path.stem):
            _RUNS[path.stem] = runbook.execute(path, executed / path.name, params)
    return _RUNS[path.stem]


LEFTOVER = "leftover-of-an-earlier-build"


def plant_leftovers(artifacts: Path) -> None:
    """What an earlier build left in artifacts/: a model folder the tuning chapter no longer trains, and a
    completed run of an old chapter run; the results chapters must show neither."""
    model = artifacts / "tuning" / "smoke" / LEFTOVER
    model.mkdir(parents=True, exist_ok=True)
    (model / "loss_history.csv").write_text("step,epoch,split,loss\n1,1,train,9.9\n")
    old = artifacts / "synthesis" / LEFTOVER
    old.mkdir(parents=True, exist_ok=True)
    (old / "manifest.json").write_text(json.dumps({
        "notebook": "02_refinement_synthesis", "run_id": LEFTOVER, "smoke": True,
        "written": "2020-01-01T00:00:00+0000", "git_revision": "0" * 40, "packages": {}}))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "smoke = False" in params[0].source
    assert not re.search(r"api_key|OPENAI_API_KEY\s*=", params[0].source), "secrets are never parameters"


DRAWING = {"plt", "sns", "ax", "axes", "fig"}  # names a cell would draw through
ALLOWED = {("plt", "show"), ("plt", "close")}  # showing or closing what the library drew is not drawing


def orchestration_problems(source: str) -> list[str]:
    """What a notebook cell does that belongs in the library: defining a function or class, or drawing
    (a call on matplotlib / seaborn / an Axes or Figure other than showing or closing it)."""
    import ast

    problems = []
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            problems.append(f"defines {getattr(node, 'name', 'a lambda')}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and isinstance(node.func.value, ast.Name) and node.func.value.id in DRAWING
              and (node.func.value.id, node.func.attr) not in ALLOWED):
            problems.append(f"draws: {node.func.value.id}.{node.func.attr}(...)")
    return problems


def test_the_orchestration_check_sees_a_function_and_a_figure():
    assert orchestration_problems("def f(x):\n    return x\nax.bar([1], [2])\nplt.show()") == [
        "defines f", "draws: ax.bar(...)"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_cells_only_orchestrate(path):
    """Notebooks set parameters, call the library, show and explain: no cell defines a function or draws
    a figure (refinelib.report.plots draws every figure of the book)."""
    nb = nbformat.read(path, as_version=4)
    found = {i: p for i, c in enumerate(nb.cells) if c.cell_type == "code"
             for p in [orchestration_problems(c.source)] if p}
    assert found == {}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_smoke_run(path, workdir):
    record = smoke_run(path, workdir)
    assert record["parameters"]["smoke"] is True and record["seconds"] > 0
    executed = nbformat.read(workdir / "book" / "executed" / path.name, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata.tags
    manifests = [json.loads(p.read_text()) for p in (workdir / "artifacts").glob("*/smoke/manifest.json")]
    mine = [m for m in manifests if m.get("notebook") == path.stem]  # its own, never another notebook's
    assert mine, "the notebook must write a manifest last"
    assert all(m["smoke"] is True and m["git_revision"] for m in mine)
    if path.stem in GATHERING:  # this build's outputs only: nothing an earlier build left behind
        assert LEFTOVER not in json.dumps([c.get("outputs") for c in executed.cells])


def test_profile_parameters(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "00_x.yaml").write_text("scale: agentboard\n")
    assert runbook.profile_parameters(Path("00_x.ipynb"), "paper", tmp_path) == {"scale": "agentboard"}
    assert runbook.profile_parameters(Path("01_y.ipynb"), "paper", tmp_path) == {}
    with pytest.raises(SystemExit, match="unknown profile 'gpu'.*paper"):
        runbook.profile_parameters(Path("00_x.ipynb"), "gpu", tmp_path)


def test_every_profile_sets_only_parameters_its_notebook_has():
    import ast

    import yaml

    names = {}
    for path in NOTEBOOKS:
        cell = next(c for c in nbformat.read(path, as_version=4).cells
                    if "parameters" in c.metadata.get("tags", []))
        names[path.stem] = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                            for t in node.targets if isinstance(t, ast.Name)}
    # train_*.yaml are train_cli configs (tests/test_paper_profile.py) and episodes.yaml the shared episode
    # settings (tests/test_profiles.py), not notebook parameters
    files = [f for f in (ROOT / "configs").glob("*/*.yaml")
             if f.parent.name != "accelerate" and not f.stem.startswith("train_") and f.stem != "episodes"]
    assert any(f.parent.name == "paper" for f in files)
    for f in files:
        assert f.stem in names, f"{f}: no notebook called {f.stem}"
        unknown = set(yaml.safe_load(f.read_text()) or {}) - names[f.stem]
        assert not unknown, f"{f}: not parameters of {f.stem}: {sorted(unknown)}"


# ------------------------------------------------------------------------------------- the book


@pytest.fixture(scope="module")
def site(workdir):
    """The book built strictly from the smoke runs: the HTML folder."""
    for path in NOTEBOOKS:
        smoke_run(path, workdir)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, workdir / name)
    for item in (ROOT / "book").iterdir():
        if item.name != "executed":
            (shutil.copytree if item.is_dir() else shutil.copy)(item, workdir / "book" / item.name)
    jb = Path(sys.executable).with_name("jupyter-book")
    env = {**os.environ, "REFINELIB_ARTIFACTS": str(workdir / "artifacts")}
    done = subprocess.run([str(jb), "build", str(workdir), "-W", "-n", "--keep-going"], capture_output=True,
                          text=True, cwd=workdir, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir / "_build" / "html"


def secret_values() -> set[str]:
    """Values of secret-looking environment variables (long enough to be meaningful), plus the fake key."""
    found = {v for k, v in os.environ.items() if SECRET_NAMES.search(k) and len(v) >= 8}
    return found | {FAKE_KEY}


def leaks(html_dir: Path, secrets: set[str]) -> list[str]:
    """Files under ``html_dir`` that contain any of ``secrets``."""
    hits = []
    for path in html_dir.rglob("*"):
        if path.is_file() and path.suffix in {".html", ".js", ".json", ".txt", ".ipynb", ".svg"}:
            text = path.read_text(errors="ignore")
            hits += [f"{path.relative_to(html_dir)}" for s in secrets if s in text]
    return hits


def files_containing(folder: Path, secret: str) -> list[str]:
    """Every file under ``folder`` (any kind, binary too) that contains ``secret``."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_llm_client_run_writes_the_key_to_no_file(tmp_path):
    """The synthesis chapter with an LLM writing the thoughts builds a real refinelib.synth.llm client from
    the
    fake key in the environment, against a local OpenAI-compatible server (whose first answer is an error
    that echoes the key). The key reaches the server, and no file the run wrote: the executed notebook, its
    run record, the samples, the datasets, the LLM cache, the manifests."""
    from tests.fake_openai import FakeOpenAI, Fault

    def answer(request):
        n = int(re.search(r"For each of the (\d+) steps", request["messages"][-1]["content"]).group(1))
        return json.dumps([f"Thought {k}: this step serves the goal." for k in range(n)])

    notebook = next(p for p in NOTEBOOKS if p.stem.startswith("02_"))
    with FakeOpenAI(answer) as server:
        server.faults.append(Fault(status=500, message=f"invalid request from {FAKE_KEY}"))
        with environment(REFINELIB_ARTIFACTS=str(tmp_path / "artifacts"),
                         REFINELIB_CACHE=str(tmp_path / "cache"), OPENAI_API_KEY=FAKE_KEY,
                         REFINELIB_NOTEBOOK=notebook.stem):
            runbook.execute(notebook, tmp_path / "executed" / notebook.name,
                            {"smoke": True, "run_id": "llm", "llm_thoughts": True, "model": "fake-model",
                             "base_url": server.base_url, "concurrency": 2})
    assert server.headers and all(h.get("authorization") == f"Bearer {FAKE_KEY}" for h in server.headers)
    assert len(server.requests) > 1  # the erroring request, and the answers that were used
    assert (tmp_path / "cache" / "llm").is_dir() and any((tmp_path / "cache" / "llm").rglob("*.json"))
    assert files_containing(tmp_path, FAKE_KEY) == []
    # the check itself works: a file that does contain the key is caught
    (tmp_path / "artifacts" / "planted.bin").write_bytes(b"\0" + FAKE_KEY.encode())
    assert files_containing(tmp_path, FAKE_KEY) == [str(Path("artifacts") / "planted.bin")]


def test_no_page_contains_a_secret(site, tmp_path):
    secrets = secret_values()
    assert leaks(site, secrets) == []
    # the check itself works: a page that does contain the key is caught
    planted = tmp_path / "planted"
    shutil.copytree(site, planted, ignore=shutil.ignore_patterns("_static", "_sphinx_design_static"))
    page = next(planted.rglob("*.html"))
    page.write_text(page.read_text() + f"<p>{FAKE_KEY}</p>")
    assert leaks(planted, secrets) == [str(page.relative_to(planted))]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def test_internal_links_resolve(site):
    pages = {p: _parse(p) for p in site.rglob("*.html") if "_static" not in p.parts}
    broken = []
    for page, parsed in pages.items():
        for href in parsed.hrefs:
            url = urlparse(href)
            if url.scheme or href.startswith(("mailto:", "//")):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {href}")
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if url.fragment not in ids:
                    broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    assert not broken, broken[:20]


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(errors="ignore"))
    return parser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("the browser test needs Chromium: apt-get install -y chromium (`make test` installs it "
                    "when it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield instance
        instance.close()


def chapter_pages(site: Path) -> list[Path]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", [toc]) for c in part.get("chapters", [])]
    return [site / f"{f}.html" for f in files]


def test_pages_load_with_figures_and_typeset_math(site, browser):
    page = browser.new_page()
    external, errors = [], []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    page.on("pageerror", lambda e: errors.append(str(e)) if str(e) not in KNOWN_PAGE_ERRORS else None)
    figures = typeset = 0
    for path in chapter_pages(site):
        assert path.exists(), f"{path.name} was not built"
        errors.clear()
        page.goto(path.as_uri(), wait_until="load")
        assert page.title(), path.name
        assert page.locator("main, article, [role=main]").count() > 0, path.name
        sizes = page.evaluate("Array.from(document.querySelectorAll('main img, article img'))"
                              ".map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])")
        broken = [s for s in sizes if s[1] == 0 or s[2] == 0]
        assert not broken, f"{path.name}: images without size: {broken}"
        figures += len(sizes)
        if page.locator(".math").count():
            page.wait_for_selector("mjx-container", timeout=15000)  # MathJax (offline) typeset it
            typeset += 1
        assert not errors, f"{path.name}: JavaScript errors {errors}"
    assert figures > 0, "the book shows no figure"
    assert typeset > 0, "no page has typeset math (the introduction has the loss formula)"
    assert not external, f"the book fetched from the network: {external[:5]}"
