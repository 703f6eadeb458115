"""Docs check (``nox -s docs``): every Python block in README.md and docs/*.md must compile."""

from __future__ import annotations

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def main() -> int:
    failures = 0
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, block in enumerate(BLOCK.findall(path.read_text()), 1):
            source = block
            if path.name == "README.md" and "# before" in block:
                continue  # the side-by-side before/after table is not one program
            try:
                compile(f"async def _block():\n{_indent(source)}", f"{path.name}#{number}", "exec")
            except SyntaxError as exc:
                failures += 1
                print(f"{path.relative_to(ROOT)} block {number}: {exc}", file=sys.stderr)
    print("docs OK" if not failures else f"{failures} broken block(s)")
    return 1 if failures else 0


def _indent(source: str) -> str:
    return "".join(f"    {line}\n" for line in source.splitlines()) or "    pass\n"


if __name__ == "__main__":
    raise SystemExit(main())
