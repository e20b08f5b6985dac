"""The repository documents every registered method in docs/methods/<name>.md, every Params field
appears in its page, and every docs/methods page the code cites exists."""

import re
from pathlib import Path

import pytest

from joryu.methods.base import METHODS, available

ROOT = Path(__file__).resolve().parents[1]
NAMES = available()


@pytest.mark.parametrize("name", NAMES)
def test_every_method_has_a_docs_page_listing_its_params(name):
    page = ROOT / "docs" / "methods" / f"{name}.md"
    assert page.is_file(), f"missing {page}"
    text = page.read_text()
    for section in ("## What it does", "## Equation", "## Defaults and why", "## Deviations", "## Reproduction"):
        assert section in text, (name, section)
    for field in METHODS.get(name).cls.Params.model_fields:
        assert f"`{field}`" in text, (name, field)


def test_cited_docs_pages_exist_and_nothing_cites_the_outside_papers_file():
    cited = set()
    for path in list((ROOT / "joryu").rglob("*.py")) + list((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        assert "PAPERS.md" not in text or path.name == "test_docs_methods.py", path
        cited |= set(re.findall(r"docs/methods/([a-z_]+)\.md", text))
    assert cited, "the code cites no docs/methods page"
    missing = sorted(n for n in cited if not (ROOT / "docs" / "methods" / f"{n}.md").is_file())
    assert not missing, missing
