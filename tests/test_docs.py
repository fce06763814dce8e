"""Every code example in the documentation runs.

The ```` ```python ```` blocks of each page (``docs/*.md`` and ``README.md``)
run in order in one namespace, as a reader would type them, so a page may
define ``model`` or ``inputs`` in an early block and use them later.  Each
block is reported as its own test (``docs/optimizers.md:81``); a page runs
once, when its first block's test asks for it.
Blocks run in a temporary working directory (files they write vanish) with
matplotlib on its non-interactive backend.

There are no illustrative-only blocks: a ```` ```python ```` block that
cannot run is a bug, and a Python block under any other fence (``py``,
``pycon``, a ``{code-block}`` directive) is refused so it cannot hide from
this test.  A block that imports an optional package that is not installed
(``import torch``, ``from matplotlib import ...``), or that needs a GPU
(``import cupy``) where there is none, is skipped; the page's other blocks
still run, and the test reports the skipped blocks.  A block is taken to
need a package when it names it (``torch.zeros``, ``.to("torch")``); a later
block that fails with NameError after a block was skipped is reported as
depending on it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import neural_arch as na

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [p for p in [ROOT / "README.md"] if p.exists()]

OPTIONAL = ("torch", "jax", "cupy", "matplotlib", "sklearn", "array_api_strict", "tqdm")
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$", re.M)
_MENTION = re.compile(rf"\b({'|'.join(OPTIONAL)})\b")
_NOT_RUN = re.compile(r"^(py|python3|pycon|ipython|ipython3|\{code-block\}\s*python\w*)$")


@dataclass
class Block:
    page: Path
    line: int  # line of the opening fence, 1-based
    info: str
    code: str


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, in order (nested fences are not used here)."""
    text = page.read_text(encoding="utf-8")
    found, pos = [], 0
    while (start := _FENCE.search(text, pos)) is not None:
        fence = start["fence"]
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        end = close.search(text, start.end())
        if end is None:
            raise AssertionError(f"{page.name}: unclosed code fence at offset {start.start()}")
        body = text[start.end() + 1 : end.start()]
        indent = len(start["indent"])
        code = "\n".join(line[indent:] for line in body.splitlines())
        line = text.count("\n", 0, start.start()) + 1
        found.append(Block(page, line, start["info"].strip(), code))
        pos = end.end()
    return found


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CUDARuntimeError and friends when no driver is present
        return False


def missing_requirement(code: str) -> str | None:
    """Why a block cannot run here (an optional package or a GPU is missing), or None."""
    for name in sorted(set(_MENTION.findall(code))):
        try:
            importlib.import_module(name)
        except ImportError:
            return f"needs {name}, which is not installed"
        if name == "cupy" and not _cuda_available():
            return "needs CuPy with a CUDA device"
    return None


def test_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"index.md", "quickstart.md", "optimizers.md", "backends.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_unrun_python_blocks(page):
    for block in blocks(page):
        assert not _NOT_RUN.match(block.info), (
            f"{page.name}:{block.line}: a Python block fenced as {block.info!r} would not be "
            "run by the docs test; fence it as ```python so that it runs"
        )


@dataclass
class Outcome:
    skipped: str | None = None  # why the block did not run
    error: BaseException | None = None


_RUNS: dict[Path, list[Outcome]] = {}


def run_page(page: Path, workdir: Path) -> list[Outcome]:
    """Run a page's python blocks in order in one namespace; one outcome per block.

    After a block fails, the page's later blocks are not run (they would fail
    for the same reason).  Warnings are errors, as everywhere in the suite.
    """
    outcomes: list[Outcome] = []
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    failed_at = None
    cwd, mpl = os.getcwd(), os.environ.get("MPLBACKEND")
    os.chdir(workdir)
    os.environ["MPLBACKEND"] = "Agg"
    try:
        for block in python_blocks(page):
            if failed_at is not None:
                outcomes.append(Outcome(skipped=f"not run: the block at line {failed_at} failed"))
                continue
            reason = missing_requirement(block.code)
            if reason is not None:
                outcomes.append(Outcome(skipped=reason))
                continue
            # Line numbers in tracebacks point into the page itself.
            code = compile("\n" * block.line + block.code, str(page), "exec")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    exec(code, namespace)
            except NameError as err:
                if any(o.skipped for o in outcomes):  # a name only a skipped block defines
                    outcomes.append(Outcome(skipped=f"uses {err.name!r} from a skipped block"))
                else:
                    outcomes.append(Outcome(error=err))
                    failed_at = block.line
            except BaseException as err:
                outcomes.append(Outcome(error=err))
                failed_at = block.line
            else:
                outcomes.append(Outcome())
    finally:
        os.chdir(cwd)
        if mpl is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = mpl
        if "matplotlib.pyplot" in sys.modules:  # figures a page left open
            sys.modules["matplotlib.pyplot"].close("all")
    return outcomes


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.info == "python"]


EXAMPLES = [(page, i, b) for page in PAGES for i, b in enumerate(python_blocks(page))]


@pytest.mark.parametrize(
    ("page", "index", "block"),
    EXAMPLES,
    ids=[f"{p.relative_to(ROOT).as_posix()}:{b.line}" for p, _, b in EXAMPLES],
)
def test_example_runs(page, index, block, tmp_path_factory):
    """One test per block; the page runs once (all blocks, in order) and is cached."""
    if page not in _RUNS:
        _RUNS[page] = run_page(page, tmp_path_factory.mktemp(page.stem))
    outcome = _RUNS[page][index]
    if outcome.skipped:
        pytest.skip(f"{page.name}:{block.line}: {outcome.skipped}")
    if outcome.error is not None:
        raise outcome.error


# ------------------------------------------------------------------ the API reference

API = DOCS / "api.rst"


def _public_names() -> dict[str, list[str]]:
    from neural_arch import backend, checkpoint, nn, optim
    from neural_arch.optim import functional, lr_scheduler, rule

    modules = {
        "neural_arch": na,
        "neural_arch.nn": nn,
        "neural_arch.optim": optim,
        "neural_arch.optim.lr_scheduler": lr_scheduler,
        "neural_arch.optim.functional": functional,
        "neural_arch.optim.rule": rule,
        "neural_arch.backend": backend,
        "neural_arch.checkpoint": checkpoint,
    }
    return {name: list(module.__all__) for name, module in modules.items()}


def test_api_reference_documents_every_public_name():
    """Each name in an ``__all__`` is documented under some module path, or is a module."""
    text = API.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", text, re.M))
    documented |= set(re.findall(r"^\.\. (?:py:)?(?:data|function|class):: ([\w.]+)", text, re.M))
    short = {d.rsplit(".", 1)[-1] for d in documented}
    missing = []
    for module, names in _public_names().items():
        for name in names:
            if name in ("optim", "functional", "lr_scheduler", "rule"):
                continue  # modules: their members are documented one by one
            if f"{module}.{name}" not in documented and name not in short:
                missing.append(f"{module}.{name}")
    assert not missing, f"docs/api.rst does not document {missing}"
