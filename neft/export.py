"""Taking a trained model away: NeFT's rows and columns as an exactly equivalent LoRA adapter.

A row delta R (r x in) on rows `rows` of W (out x in) is S_r R, with S_r (out x r) the one-hot
selector of those rows; a column delta C (out x c) on columns `columns` is C S_c^T, with S_c
(in x c) selecting them. So with B = [S_r | C] (out x (r + c)) and A = [R ; S_c^T] ((r + c) x in),
B A = S_r R + C S_c^T is exactly the delta, and a LoRA adapter of rank r + c with scale 1
(lora_alpha = rank) reproduces it. Ranks differ between matrices, so the adapter uses PEFT's
`rank_pattern`/`alpha_pattern` with one entry per wrapped matrix. The adapter stores the one-hot
selectors densely: it is larger than the delta file (about (out + in) / in times for row-only
matrices), which is the price of loading in a stock LoRA server.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from neft.delta import NeftDelta
from neft.methods import save_lora_adapter


def lora_factors(parts: dict[str, torch.Tensor], out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A equal to the matrix's row and column deltas (fp32)."""
    rows, columns = parts["rows"].long(), parts["columns"].long()
    r, c = len(rows), len(columns)
    a = torch.zeros(r + c, in_features)
    b = torch.zeros(out_features, r + c)
    a[:r] = parts["row_delta"].float()
    b[rows, torch.arange(r)] = 1.0
    a[torch.arange(r, r + c), columns] = 1.0
    b[:, r:] = parts["column_delta"].float()
    return a, b


def export_lora_adapter(base_model: nn.Module, delta: NeftDelta, out_dir: Path) -> dict[str, int]:
    """Save `delta` as a PEFT LoRA adapter for `base_model` (which this wraps in place); returns the
    rank of each adapted matrix."""
    ranks = {name: len(parts["rows"]) + len(parts["columns"]) for name, parts in delta.modules.items()}
    patterns = {re.escape(name): rank for name, rank in ranks.items()}
    config = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=sorted(ranks),
        rank_pattern=patterns,
        alpha_pattern=patterns,  # alpha = rank: scale 1
        lora_dropout=0.0,
        bias="none",
    )
    peft_model = get_peft_model(base_model, config)
    with torch.no_grad():
        for name, parts in delta.modules.items():
            layer = peft_model.base_model.model.get_submodule(name)
            base = layer.get_base_layer()
            a, b = lora_factors(parts, base.out_features, base.in_features)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    save_lora_adapter(peft_model, out_dir)
    return ranks
