"""Trace sets on disk: safetensors (fp16) plus a JSON list of the examples; never pickles.

Predictor inputs are stored in fp16. Scores span many decades (fisher squares), so each
example's scores are divided by that example's largest |score| (over all layers, heads and
neurons alike) before the fp16 cast, and the scale is kept in fp32: every ranking within
an example, global or per layer, survives; values under ~6e-8 of the example's maximum
round to zero. Per-token samples (`token_*` tensors) are stored the same way, scaled per
sample, with their example index and position (int32).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shadow_sweep.data.calibration import CalibrationExample
from typing import Optional

from shadow_sweep.traces.collect import TokenBatch, TraceBatch

TENSORS = "traces.safetensors"
EXAMPLES = "examples.json"


@dataclass
class TraceSet:
    batch: TraceBatch
    examples: list[CalibrationExample]
    tokens: Optional[TokenBatch] = None  # per-token samples (criteria with a per-token form)

    def __len__(self) -> int:
        return len(self.examples)


def _scale(batch: TraceBatch) -> torch.Tensor:
    peak = torch.maximum(batch.head_scores.abs().flatten(1).amax(1), batch.neuron_scores.abs().flatten(1).amax(1))
    return torch.where(peak > 0, peak, torch.ones_like(peak))


def _encoded(batch: TraceBatch, prefix: str = "") -> dict[str, torch.Tensor]:
    scale = _scale(batch)
    return {
        f"{prefix}shadow_input": batch.shadow_input.half(),
        f"{prefix}dejavu_input": batch.dejavu_input.half(),
        f"{prefix}head_scores": (batch.head_scores / scale[:, None, None]).half(),
        f"{prefix}neuron_scores": (batch.neuron_scores / scale[:, None, None]).half(),
        f"{prefix}mlp_input": batch.mlp_input.half(),
        f"{prefix}score_scale": scale.float(),
    }


def _decoded(t: dict[str, torch.Tensor], prefix: str = "") -> list[torch.Tensor]:
    scale = t[f"{prefix}score_scale"][:, None, None]
    return [t[f"{prefix}shadow_input"].float(), t[f"{prefix}dejavu_input"].float(),
            t[f"{prefix}head_scores"].float() * scale, t[f"{prefix}neuron_scores"].float() * scale,
            t[f"{prefix}mlp_input"].float()]


def save_traces(traces: TraceSet, folder: Path) -> None:
    tensors = _encoded(traces.batch)
    if traces.tokens is not None:
        tensors.update(_encoded(traces.tokens, "token_"))
        tensors.update(token_example=traces.tokens.example.int(), token_position=traces.tokens.position.int())
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / TENSORS))
    (folder / EXAMPLES).write_text(json.dumps([e.__dict__ for e in traces.examples]))


def load_traces(folder: Path) -> TraceSet:
    t = load_file(str(folder / TENSORS))
    examples = [CalibrationExample(**e) for e in json.loads((folder / EXAMPLES).read_text())]
    tokens = None
    if "token_example" in t:
        tokens = TokenBatch(*_decoded(t, "token_"), t["token_example"].long(), t["token_position"].long())
    return TraceSet(TraceBatch(*_decoded(t)), examples, tokens)
