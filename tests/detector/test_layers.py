"""The detector's use cases are peers: Detect's (service.py) and the similarity index's
(similarity_service.py) import nothing from each other; what both need sits below them
(embedder_calls.py)."""

import ast
import inspect

import pytest

from oddity.detector import service, similarity_service

USE_CASES = {service.__name__, similarity_service.__name__}


def imported(module) -> set[str]:
    """The modules `module` imports from, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", [service, similarity_service], ids=lambda m: m.__name__)
def test_a_use_case_imports_no_other_use_case(module):
    assert imported(module) & (USE_CASES - {module.__name__}) == set()
