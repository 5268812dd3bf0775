"""Files that ship inside the package, found the same way from a wheel and from the repository.

The example configuration (every key of the main file with its default) is package data,
``mt6d_mp/mt6d.toml.example`` (``conf/mt6d.toml.example`` in the repository links to it), so an
installed copy needs no repository checkout.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

EXAMPLE_CONFIG = "mt6d.toml.example"


def example_config() -> Traversable:
    """The example configuration file (``read_text()``; ``str()`` is its path when on disk)."""
    return resources.files("mt6d_mp") / EXAMPLE_CONFIG
