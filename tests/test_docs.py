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


def test_the_readme_library_example_runs_as_written(tiny_model, tmp_path):
    """README's "Using NeFT in your own code" block, run on the tiny model and a perturbed copy as probe."""
    import torch
    from conftest import inside

    section = (ROOT / "README.md").read_text().split("## Using NeFT in your own code", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    tiny_model.save_pretrained(tmp_path / "base_dir")
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    tiny_model.save_pretrained(tmp_path / "probe_dir")
    namespace: dict = {}
    with inside(tmp_path):
        exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my_delta" / "neft_delta.safetensors").is_file()
    merged, again = namespace["merged"].state_dict(), namespace["again"].merge_and_unload().state_dict()
    assert all(torch.equal(tensor, again[name]) for name, tensor in merged.items())
