"""docs/architecture.md cannot drift silently: the functions its data path names exist, there
are at most five of them (issue 19 acceptance 4), and every runtime module (streamqa/) is in
its layout."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def data_path() -> list[str]:
    """The dotted names of the numbered list between the data-path markers."""
    section = re.search(r"<!-- data-path:.*?-->(.*?)<!-- /data-path -->", DOC, re.S)
    assert section, "docs/architecture.md has no data-path section"
    return re.findall(r"^\d+\. `([\w.]+)`", section.group(1), re.M)


def resolve(dotted: str) -> object:
    """The object a dotted name points to: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_data_path_names_at_most_five_functions_that_exist() -> None:
    names = data_path()
    assert 1 <= len(names) <= 5, names
    for name in names:
        assert callable(resolve(name)), name


def test_resolve_refuses_a_name_that_is_not_in_the_code() -> None:
    try:
        resolve("streamqa.engine.Engine.no_such_method")
    except AttributeError:
        return
    raise AssertionError("a missing function was resolved")


def test_layout_lists_every_runtime_module() -> None:
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", DOC, re.M))
    modules = {str(p.relative_to(ROOT / "streamqa")) for p in (ROOT / "streamqa").rglob("*.py")
               if p.read_text().strip()}  # an empty __init__.py is no module to explain
    assert modules - listed == set(), "add them to docs/architecture.md's layout"
    assert listed - modules == set(), "docs/architecture.md lists modules that are gone"
