"""The promotion gate: a new version replaces the current one only if no gate metric falls too far."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Sequence, Tuple

GATE_METRICS = (("CIDEr", "CIDEr-D"), ("Bleu_4", "BLEU-4"))


@dataclass
class Decision:
    promote: bool
    reasons: List[str]


def promotion_decision(old: Mapping[str, float], new: Mapping[str, float], tolerance: float = 0.05,
                       min_drop: float = 0.005, gates: Sequence[Tuple[str, str]] = GATE_METRICS) -> Decision:
    """Promote only if no gate metric falls by more than ``max(tolerance * old, min_drop)``.

    ``tolerance`` is relative (0.05 = 5 % of the old value), ``min_drop`` an absolute floor so a
    near-zero old score does not make the gate impossibly tight."""
    reasons, ok = [], True
    for key, label in gates:
        if key not in new:
            ok = False
            reasons.append(f"{label}: the new model has no score")
            continue
        if key not in old:
            reasons.append(f"{label}: {new[key]:.4f} (no earlier score to compare)")
            continue
        allowed = max(tolerance * abs(old[key]), min_drop)
        drop = old[key] - new[key]
        if drop > allowed:
            ok = False
            reasons.append(f"{label} fell {old[key]:.4f} -> {new[key]:.4f} (drop {drop:.4f} > allowed {allowed:.4f})")
        else:
            reasons.append(f"{label} {old[key]:.4f} -> {new[key]:.4f} (within the allowed drop {allowed:.4f})")
    return Decision(ok, reasons)
