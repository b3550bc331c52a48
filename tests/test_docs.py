"""The Python code blocks of README.md and docs/ run as written (with fewer timesteps)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in DOCUMENTS
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


@pytest.mark.parametrize("block", BLOCKS)
def test_code_block_runs(block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the block saves land in a temporary folder
    exec(compile(block.replace(".learn(50_000", ".learn(300"), "<doc>", "exec"), {})


def test_there_are_blocks_to_check() -> None:
    assert len(BLOCKS) >= 2


def test_reliability_table_lists_every_bad_keyword_test() -> None:
    from test_reliability import BAD_KEYWORDS

    text = (ROOT / "docs" / "reliability.md").read_text()
    for keyword, value, _ in BAD_KEYWORDS:
        shown = "a schedule returning -1.0" if callable(value) else f"`{value!r}`"
        assert f"| `{keyword}` | {shown} |" in text, (keyword, value)
