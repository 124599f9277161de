"""Trace sets on disk: safetensors (fp16) plus a JSON list of the examples; never pickles.

Predictor inputs are stored in fp16. Scores span many decades (fisher squares), so each
example's scores are divided by that example's largest |score| (over all layers, heads and
neurons alike) before the fp16 cast, and the scale is kept in fp32: every ranking within
an example, global or per layer, survives; values under ~6e-8 of the example's maximum
round to zero.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shadow_sweep.data.calibration import CalibrationExample
from shadow_sweep.traces.collect import TraceBatch

TENSORS = "traces.safetensors"
EXAMPLES = "examples.json"


@dataclass
class TraceSet:
    batch: TraceBatch
    examples: list[CalibrationExample]

    def __len__(self) -> int:
        return len(self.examples)


def _scale(batch: TraceBatch) -> torch.Tensor:
    peak = torch.maximum(batch.head_scores.abs().flatten(1).amax(1), batch.neuron_scores.abs().flatten(1).amax(1))
    return torch.where(peak > 0, peak, torch.ones_like(peak))


def save_traces(traces: TraceSet, folder: Path) -> None:
    batch = traces.batch
    scale = _scale(batch)
    tensors = {
        "shadow_input": batch.shadow_input.half(),
        "dejavu_input": batch.dejavu_input.half(),
        "head_scores": (batch.head_scores / scale[:, None, None]).half(),
        "neuron_scores": (batch.neuron_scores / scale[:, None, None]).half(),
        "score_scale": scale.float(),
    }
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / TENSORS))
    (folder / EXAMPLES).write_text(json.dumps([e.__dict__ for e in traces.examples]))


def load_traces(folder: Path) -> TraceSet:
    t = load_file(str(folder / TENSORS))
    scale = t["score_scale"][:, None, None]
    batch = TraceBatch(t["shadow_input"].float(), t["dejavu_input"].float(), t["head_scores"].float() * scale,
                       t["neuron_scores"].float() * scale)
    examples = [CalibrationExample(**e) for e in json.loads((folder / EXAMPLES).read_text())]
    return TraceSet(batch, examples)
