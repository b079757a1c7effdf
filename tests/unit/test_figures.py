"""bench.figures without measuring: where a table goes in a page, and the pages it writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import figures
from tests.support import usage_error

PAGE = """# Title

Before.

<!-- bench.figures: bench.run -->
```
old table
```
<!-- bench.figures: end -->

After, with a `code` span.
"""


def test_splice_replaces_only_the_named_block() -> None:
    spliced = figures.splice(PAGE, "bench.run", "new\ntable")
    assert spliced == PAGE.replace("old table", "new\ntable")
    assert figures.splice(spliced, "bench.run", "old table") == PAGE


def test_a_page_without_the_block_is_refused() -> None:
    with pytest.raises(ValueError, match=r"bench.figures: bench.peers"):
        figures.splice(PAGE, "bench.peers", "table")


def test_the_docs_have_the_blocks_it_writes() -> None:
    args = figures.parse_args([])
    assert [(args.docs / page).is_file() for page, _ in figures.PAGES] == [True, True]


def test_docs_without_the_blocks_are_a_usage_error_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "performance.md").write_text(PAGE)
    (tmp_path / "peers.md").write_text("# Peers\n")
    assert "peers.md" in usage_error(capsys, figures.parse_args, "--docs", str(tmp_path))
