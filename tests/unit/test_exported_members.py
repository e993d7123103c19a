"""Every module's ``__all__`` lists exactly the public classes and functions it defines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import agent
import aggregator
import contract
import linewatch
import outage


def _modules() -> list[str]:
    names = []
    for pkg in (contract, outage, agent, aggregator, linewatch):
        names.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            if not info.name.endswith("__main__"):
                names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_all_matches_public_definitions(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.fail(f"{name} has no __all__")
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"
    defined = {
        n for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == name
    }
    unlisted = sorted(defined - set(exported))
    assert not unlisted, f"{name} defines public {unlisted} but does not export them"
