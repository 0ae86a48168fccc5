"""What SaLSa does differently for a LoRA adapter: A steps slower, and the test is stricter.

LoRA's A matrices step at a sixteenth of the step size (LoRA+, Hayou et al., ICML 2024). The
search sees a move of ``A`` only through ``B``, which starts at zero: at any step size the loss
along the update hardly changes with ``A``, so the test passes steps at which ``A`` drifts far,
and the adapter collapses once ``B`` has grown (``docs/lab.md``, eighth round). LoRA+ gives ``B``
sixteen times ``A``'s rate for the same reason: the product learns at the pace of both.

Even so the loss along an adapter's update stays near-straight far past the step size at which
the adapter stops learning: at fixed rates, the test's boundary lay 5-25x beyond a rate that
collapses the QNLI adapter, where on full models it lies at 0.6-3x the best rate (eleventh
round). So an adapter's test asks for more of the predicted decrease: ``LORA_C``.
"""

from __future__ import annotations

from typing import Any

import torch

LORA_A_RELATIVE_STEP = 1 / 16
LORA_C = 0.95  # SaLSa's c for a model with LoRA factors (0.8 for the rest); --salsa_c overrides it
# How PEFT names the A factors (``...query.lora_A.default.weight``, ``lora_embedding_A.default``).
LORA_A_NAMES = (".lora_A.", ".lora_embedding_A.")


def is_lora_a(name: str) -> bool:
    return any(part in name for part in LORA_A_NAMES)


def has_lora(model: torch.nn.Module) -> bool:
    return any(is_lora_a(name) for name, _ in model.named_parameters())


def lora_settings(model: torch.nn.Module) -> dict[str, Any]:
    """SaLSa's settings that differ for a model with LoRA factors (none for any other model)."""
    return {"c": LORA_C} if has_lora(model) else {}


def lora_param_groups(model: torch.nn.Module, groups: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``groups`` (default: one group of the model's trainable parameters) with each group's LoRA A
    factors moved into a copy of it at ``relative_step`` times ``LORA_A_RELATIVE_STEP``; a model
    without LoRA gets its groups back unchanged."""
    if groups is None:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    slow = {id(p) for name, p in model.named_parameters() if is_lora_a(name)}
    rest, factors = [], []
    for group in groups:
        params = list(group["params"])
        kept = [p for p in params if id(p) not in slow]
        moved = [p for p in params if id(p) in slow]
        rest.append({**group, "params": kept})  # kept even if empty: a checkpoint's groups line up
        if moved:
            factors.append({**group, "params": moved,
                            "relative_step": group.get("relative_step", 1.0) * LORA_A_RELATIVE_STEP})
    return rest + factors  # the first group keeps the step size itself (``lr`` as loggers read it)
