"""Static checks of the source that ruff does not make."""

import ast

from conftest import REPO


def unreachable(source: str) -> list[int]:
    """Lines of statements that follow a return, raise, continue or break in the same block."""
    found = []
    for node in ast.walk(ast.parse(source)):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                found += [block[i + 1].lineno for i, st in enumerate(block[:-1])
                          if isinstance(st, (ast.Return, ast.Raise, ast.Continue, ast.Break))]
    return found


def test_no_code_follows_a_return_or_raise():
    """Twice a method slid below a module function's ``return`` in a merge (W&B's run folder made too late, FID's
    sync): it became dead code, and nothing failed."""
    assert unreachable("def f():\n    return 1\n\n    def g(self):\n        pass\n") == [4]  # what it finds
    dead = {str(p.relative_to(REPO)): lines for p in sorted(REPO.glob("[pe]*/**/*.py")) + sorted(REPO.glob("tests/**/*.py"))
            if (lines := unreachable(p.read_text()))}
    assert not dead, dead
