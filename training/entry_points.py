"""Write lmarc's entry-point metadata into a folder on sys.path, for running from a plain checkout.

The built-in plugins load through the `lmarc` entry-point group, which exists only once the project is
installed. A machine that cannot pip-install it (a lent GPU with no package index and an old
setuptools) gets the same entry points from pyproject.toml this way, with `lmarc_plugins` linked to
`plugins/` by the caller. Usage: python training/entry_points.py SITE_DIR
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def write_dist_info(site: Path, pyproject: Path) -> Path:
    """SITE/lmarc-VERSION.dist-info with METADATA and entry_points.txt taken from pyproject."""
    project = tomllib.loads(pyproject.read_text())["project"]
    info = site / f"lmarc-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: lmarc\nVersion: {project['version']}\n")
    eps = project["entry-points"]["lmarc"]
    (info / "entry_points.txt").write_text("[lmarc]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return info


if __name__ == "__main__":
    print(write_dist_info(Path(sys.argv[1]), Path(__file__).resolve().parent.parent / "pyproject.toml"))
