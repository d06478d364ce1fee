"""The README's examples as tests read them: its ```python blocks and its shell commands, with the demo's paths
swapped for a test's. A Python block that cannot run offline says so on its first line (OFFLINE_MARK)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
OFFLINE_MARK = "# not run offline:"  # first line of a python block the tests skip by name, with the reason


def python_blocks() -> list[tuple[int, str]]:
    """(line of the opening fence, code) of every ```python block, in order."""
    blocks, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```python\s*$", lines[i])
        if opening:
            indent, start, body = len(opening.group(1)), i + 1, []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i][indent:])
                i += 1
            blocks.append((start, "\n".join(body) + "\n"))
        i += 1
    return blocks


def offline_reason(code: str) -> str | None:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    return first[len(OFFLINE_MARK):].strip() if first.startswith(OFFLINE_MARK) else None


def shell_command(starts_with: str) -> str:
    """The README's shell command that begins with `starts_with`, its continuation lines joined."""
    lines = README.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(starts_with):
            parts = [line.strip()]
            while parts[-1].endswith("\\"):
                parts[-1] = parts[-1][:-1].rstrip()
                i += 1
                parts.append(lines[i].strip())
            return " ".join(parts)
    raise AssertionError(f"{README}: no command starting with {starts_with!r}")


def localised(text: str, out: Path) -> str:
    """The demo's and the tiny run's output directories (out/demo/..., out/tiny/...) moved to `out`."""
    return re.sub(r"\bout/(demo|tiny)/", f"{out}/", text)
