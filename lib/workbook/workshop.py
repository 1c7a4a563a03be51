"""Workshop helpers: notebooks for a learner to work in, apart from the committed ones.

The committed notebooks carry the outputs that nbval compares; a learner who edits and runs
them would change those. ``learner_copies`` writes the same notebooks with their outputs
cleared into a folder of the learner's own (solutions stay folded in their ``<details>``
blocks), and never overwrites a copy the learner may have changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbook.config import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
LEARNER_DIR = REPO_ROOT / "learner"


def learner_copies(target: Path = LEARNER_DIR, force: bool = False) -> dict[str, list[str]]:
    """Write each notebook without outputs into ``target``; keep existing copies, unless
    ``force``."""
    import nbformat

    target.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"written": [], "kept": []}
    for source in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        copy = target / source.name
        if copy.exists() and not force:
            done["kept"].append(source.name)
            continue
        notebook = nbformat.read(source, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        nbformat.write(notebook, copy)
        done["written"].append(source.name)
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Notebooks for a learner, outputs cleared.")
    parser.add_argument("--to", type=Path, default=LEARNER_DIR, help="the learner's folder")
    parser.add_argument("--force", action="store_true", help="overwrite the learner's copies")
    args = parser.parse_args(argv)
    done = learner_copies(args.to, args.force)
    print(f"In {args.to}: written {', '.join(done['written']) or 'none'}")
    if done["kept"]:
        print(f"Kept as they are (your edits; --force to replace): {', '.join(done['kept'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
