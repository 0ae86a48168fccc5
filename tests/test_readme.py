"""Every Python snippet of the README runs as written (from the repository root, ../shared beside it)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

SNIPPETS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_a_readme_snippet_runs_as_written(index, shared_data, bert_tokenizer):
    result = subprocess.run([sys.executable, "-c", SNIPPETS[index]], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"snippet {index} failed:\n{SNIPPETS[index]}\n{result.stderr[-3000:]}"
