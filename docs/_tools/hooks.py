"""MkDocs hooks of the documentation site (mkdocs.yml: ``hooks``).

The notebooks live in ``notebooks/`` at the repository root (the test suite and ``make
notebooks`` run them there); this hook adds them to the site as ``notebooks/<name>.ipynb``
without copying them into ``docs/``, before mkdocs-jupyter turns them into pages.
"""

from __future__ import annotations

import pathlib

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter's on_files, which picks the notebooks up
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
