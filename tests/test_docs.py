"""The front door and the docs pages: short, every relative link and anchor resolves, every page is indexed."""

import re

from conftest import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path) -> set[str]:
    found, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_every_relative_link_and_anchor_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "RESULTS.md"]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_front_door_is_short_and_indexes_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert readme.startswith("# pix2pix-lit\n\n```bash\nmake train") and "\nmake test " in readme.split("```")[1]
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, page.name


def test_results_is_a_claims_table_whose_entries_exist_and_are_all_listed():
    """experiments/RESULTS.md: the current claims, each row naming its command, hardware and a dated entry under
    experiments/log/; every entry listed once."""
    text = (REPO / "experiments" / "RESULTS.md").read_text()
    claims = text.split("\n## ")[0]  # the claims table; sections after it (a recipe table, the entries) are free-form
    rows = [line for line in claims.splitlines() if line.startswith("| ") and "](log/" in line]
    assert rows and all(row.count(" | ") == 4 and "`" in row for row in rows)  # claim | figure | command | hw | entry
    listed = set(re.findall(r"\]\(log/([^)]+)\)", text))
    assert listed == {p.name for p in (REPO / "experiments" / "log").glob("*.md")}



def test_every_test_the_docs_name_exists():
    """``tests/....py`` and ``tests/....py::test_name`` in the README, docs/ and RESULTS.md name a test file, and a
    test in it, that exist (a test moved to another file once left a page pointing at nothing)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "RESULTS.md"]
    missing = []
    for page in pages:
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", page.read_text()):
            file = REPO / path
            if not file.is_file() or (name and not re.search(rf"^def {name}\(", file.read_text(), re.M)):
                missing.append(f"{page.name}: {path}{'::' + name if name else ''}")
    assert not missing, missing
