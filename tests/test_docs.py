"""The documentation builds with mkdocs in strict mode (a broken link, a missing anchor or a page
left out of the navigation fails), and every relative link in README.md points at a file."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_the_docs_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "statistics" / "index.html").is_file()


def test_every_relative_link_in_the_readme_exists():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    relative = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert relative, "the README links its docs pages"
    missing = [link for link in relative if not (ROOT / link).exists()]
    assert not missing, missing
