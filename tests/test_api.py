"""README's "Using NeFT in your own code" runs as written, on two tiny checkpoints."""

import re

import torch
from conftest import ROOT


def readme_api_example() -> str:
    section = ROOT.joinpath("README.md").read_text().split("## Using NeFT in your own code", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs_and_both_merges_agree(tiny_model, tmp_path, monkeypatch):
    tiny_model.save_pretrained(tmp_path / "base_dir")
    probe = tiny_model
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in probe.parameters():
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator))
    probe.save_pretrained(tmp_path / "probe_dir")
    monkeypatch.chdir(tmp_path)

    namespace: dict = {}
    exec(compile(readme_api_example(), "README.md", "exec"), namespace)  # noqa: S102 - the README's own code

    mask, merged, plain = namespace["mask"], namespace["merged"], namespace["again"].merge_and_unload()
    assert mask.num_neurons > 0 and (tmp_path / "my_delta" / "neft_config.json").is_file()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, plain.state_dict()[name]), name
