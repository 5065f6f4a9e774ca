"""Run under ``python -S`` with only the source roots and grimp's site dir on sys.path.

Prints, as JSON, every import between arena_eval modules that grimp finds in the source
tree: no installed package, no editable finder, no mapping, so what it sees is what any
tool reading the checkout sees. ``tests/test_import_graph.py`` checks the result.
"""

from __future__ import annotations

import json
import sys

import grimp


def main() -> None:
    graph = grimp.build_graph("arena_eval", cache_dir=None)
    edges = {
        module: sorted(graph.find_modules_directly_imported_by(module))
        for module in sorted(graph.modules)
    }
    json.dump(edges, sys.stdout)


if __name__ == "__main__":
    main()
