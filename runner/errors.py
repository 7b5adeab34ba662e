"""One error type for everything a user can get wrong or that can fail in a run.

The CLI turns it into a single paragraph and an exit code; nothing user-facing should surface as a traceback.
"""
from __future__ import annotations


class TunebookError(Exception):
    """A problem the user can fix: what went wrong, where (file:line when known), and how to fix it."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, exit_code: int = 2):
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix
        self.exit_code = exit_code

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += f" (at {self.where})"
        if self.fix:
            text += f". {self.fix}" if not text.endswith(".") else f" {self.fix}"
        return text


class RecipeErrors(TunebookError):
    """Several problems found in one recipe at once; each item is a (where, message) pair."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {where}: {msg}" for where, msg in problems)
        n = len(problems)
        super().__init__(
            f"{path}: {n} problem{'s' if n != 1 else ''} in the recipe:\n{lines}",
            fix=None,
            exit_code=2,
        )

    def __str__(self) -> str:
        return self.what
