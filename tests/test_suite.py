"""The test suite checks itself for asserts that cannot fail, so that a green run means something.

Cheap, syntactic checks over every ``tests/*.py``: an assert that holds whatever the code does
(``assert len(x) >= 0``, ``assert True``, ``assert a == a``, ``isinstance(x, object)``) and an
``importorskip`` of the project's own packages (which turns a broken import into a skip). And the CI rule
of tests/conftest.py: a module skipped at collection fails there, as a skipped test does.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
OWN_PACKAGES = ("toolkit", "devices", "models", "calibration")


def _never_false(test: ast.expr) -> str | None:
    """Why ``assert test`` cannot fail, or None."""
    if isinstance(test, ast.Constant) and test.value:
        return "a true constant"
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        reasons = [_never_false(v) for v in test.values]
        return next((r for r in reasons if r), None)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return _never_false(test.values[0]) if len(test.values) == 1 else None
    if isinstance(test, ast.Call) and ast.unparse(test.func) == "isinstance" and len(test.args) == 2:
        if ast.unparse(test.args[1]) == "object":
            return "isinstance(..., object)"
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if ast.dump(left) == ast.dump(right) and isinstance(op, ast.Eq | ast.GtE | ast.LtE | ast.Is):
            return "a value compared with itself"
        bound = _number(right)
        if isinstance(left, ast.Call) and ast.unparse(left.func) in ("len", "abs") and bound is not None:
            if (isinstance(op, ast.GtE) and bound <= 0) or (isinstance(op, ast.Gt) and bound < 0):
                return f"{ast.unparse(left.func)}(...) is never negative"
    return None


def _number(node: ast.expr) -> float | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            why = _never_false(node.test)
            if why:
                found.append(f"{path.name}:{node.lineno}: `assert {ast.unparse(node.test)}` cannot fail ({why})")
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "pytest.importorskip" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in OWN_PACKAGES:
                found.append(f"{path.name}:{node.lineno}: importorskip of the project's own {arg.value!r} hides a "
                             "broken import as a skip; import it")
    return found


def test_no_test_asserts_what_cannot_fail() -> None:
    problems = [p for path in sorted(TESTS.glob("*.py")) for p in _problems(path)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("assert len(xs) >= 0", True),
        ("assert abs(x) > -1", True),
        ("assert True", True),
        ("assert a.b == a.b", True),
        ("assert isinstance(x, object)", True),
        ("assert ok or len(xs) >= 0", True),
        ("pytest.importorskip('models.yolox')", True),
        ("assert len(xs) >= 1", False),
        ("assert len(xs) == 0", False),
        ("assert a == b", False),
        ("pytest.importorskip('litert_torch')", False),
    ],
)
def test_the_check_catches_tautologies_and_only_them(tmp_path: Path, source: str, caught: bool) -> None:
    path = tmp_path / "test_sample.py"
    path.write_text(source + "\n")
    assert bool(_problems(path)) == caught


#: A test file whose module-level importorskip cannot import: the whole file skips at collection.
NEEDS_MISSING = """\
import pytest

pytest.importorskip("edgesight_no_such_module", reason="edgesight_no_such_module is not installed")


def test_never_collected():
    pass
"""


def _pytest_on(tree: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": "true"} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tree),
                           "-c", str(tree / "pytest.ini"), str(tree / "tests")],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_module_skipped_at_collection_fails_in_ci_only(tmp_path: Path) -> None:
    # The suite's own conftest.py, beside a module that skips at collection and one that passes.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_needs_missing.py").write_text(NEEDS_MISSING)
    (tmp_path / "tests" / "test_fine.py").write_text("def test_fine():\n    pass\n")

    outside = _pytest_on(tmp_path, ci=False)
    assert outside.returncode == 0, outside.stdout + outside.stderr
    assert "1 passed, 1 skipped" in outside.stdout, outside.stdout

    ci = _pytest_on(tmp_path, ci=True)
    assert ci.returncode not in (0, 5), ci.stdout + ci.stderr
    assert "1 error" in ci.stdout and "skipped" not in ci.stdout.splitlines()[-1], ci.stdout
    assert "tests/test_needs_missing.py was skipped at collection in CI" in ci.stdout, ci.stdout
    assert "edgesight_no_such_module is not installed" in ci.stdout, ci.stdout
