"""Style rules a machine checks (issue 23): every ``type: ignore`` names its error codes and says
why, on the same line: ``# type: ignore[attr-defined]  # kopf has no stubs for ...``."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Our Python: the packages, the tests, the dev tools, the benchmarks and the scripts.
TOP = ("core", "operator", "client", "trainer-image", "tests", "devtools", "benchmarks", "scripts")
SKIP_PARTS = {"wheelhouse", "build", "__pycache__", ".venv"}

IGNORE = re.compile(r"#\s*type:\s*ignore\b")
# "# type: ignore[code, code]  # a reason" (the reason: anything but blank)
WITH_REASON = re.compile(r"#\s*type:\s*ignore\[[a-z][a-z0-9-]*(\s*,\s*[a-z][a-z0-9-]*)*\]\s*#\s*\S")


def our_python_files() -> list[Path]:
    files: list[Path] = []
    for top in TOP:
        for path in (ROOT / top).rglob("*.py"):
            if not SKIP_PARTS.intersection(path.relative_to(ROOT).parts):
                files.append(path)
    return sorted(files)


def bare_ignores(source: str) -> list[tuple[int, str]]:
    """(line, comment) of each ``type: ignore`` comment without codes and a reason."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and IGNORE.search(token.string) and not WITH_REASON.search(token.string):
            found.append((token.start[0], token.string))
    return found


def test_the_rule_itself() -> None:
    ok = "x = f()  # type: ignore[attr-defined]  # kopf has no stubs\ny = g()  # type: ignore[arg-type, misc]  # why\n"
    assert bare_ignores(ok) == []
    bad = (
        "a = 1  # type: ignore\n"
        "b = 2  # type: ignore[assignment]\n"
        "c = 3  # type:ignore[assignment]  #\n"
        "d = 4  # type: ignore  # a reason, but no code\n"
    )
    assert [line for line, _ in bare_ignores(bad)] == [1, 2, 3, 4]
    # In a string it is not a comment.
    assert bare_ignores('s = "# type: ignore"\n') == []


def test_every_type_ignore_has_a_code_and_a_reason() -> None:
    files = our_python_files()
    assert len(files) > 100, "the scan found too few files: is ROOT right?"
    problems = [
        f"{path.relative_to(ROOT)}:{line}: {comment}"
        for path in files
        for line, comment in bare_ignores(path.read_text(encoding="utf-8"))
    ]
    assert not problems, (
        "a type: ignore needs its error code and a reason on the same line, "
        "e.g. '# type: ignore[attr-defined]  # kopf has no stubs for ...':\n" + "\n".join(problems)
    )
