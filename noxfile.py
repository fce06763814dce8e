"""The backend matrix: one ``tests`` session per file in ``backends/``, plus ``lint``.

nox -s lint
nox -s "tests(backend='torch')"
nox -l                      # list sessions
"""

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "docs"]

ROOT = Path(__file__).parent
BACKENDS = sorted(p.stem for p in (ROOT / "backends").glob("*.txt"))


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The test suite on one backend (plus NumPy, the reference every test needs)."""
    session.install("-e", ".[test,fast,examples]", "-r", f"backends/{backend}.txt")
    selected = "numpy" if backend == "numpy" else f"numpy,{backend}"
    session.run("pytest", *session.posargs, env={"NEURAL_ARCH_TEST_BACKENDS": selected})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with warnings as errors (tests/test_docs.py runs its examples)."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
