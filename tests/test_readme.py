"""The README's Python examples run, in order, in one namespace (blocks marked `<!-- no-run: ... -->` excepted)."""

import re

import pytest

from conftest import REPO

BLOCK = re.compile(r"(<!-- no-run:[^>]*-->\s*)?```python\n(.*?)```", re.S)


@pytest.mark.slow
def test_readme_python_examples_run():
    blocks = [code for skip, code in BLOCK.findall((REPO / "README.md").read_text()) if not skip]
    assert len(blocks) >= 4
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["points"].shape == (2, 17, 3)
