"""Calibration statistics of the selectors that choose at the real activations: per (score, slot,
layer) a histogram of the score over the calibration examples' tokens (at the positions the
traces sample, `calibration.positions_per_example`), on log-spaced bins, and the weights'
column norms. Thresholds for any level come from it, so it is
computed once per model and calibration set and reused across levels and selectors (the stage
`statistics`, cached under the model, the calibration fields and the data split).

Scores (keys `<score>/<slot>`):
- `magnitude`: |x_i| of a slot's input x (TEAL);
- `weighted`: |x_i| ||W[:, i]||_2, W the weights that read x stacked (q/k/v; o; gate/up; down)
  (WINA);
- `gate` (slot neuron_activation only): |act(gate)_i|, the gate projection's activation (CATS);
  without a gate, |x_i| of the neuron activation.
`threshold(score, slot, layer, level)` is t with P(score <= t) = level on the calibration
tokens (linear in log10 within a bin of 1/256 decade; scores below 1e-12, zeros included, fall
in one bin below the range, so a level they cover keeps only scores above 0).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from shadow_sweep.data.calibration import EncodedExample
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import Slot

LOW, HIGH = -12, 6  # log10 range of the bins
BINS_PER_DECADE = 256
BINS = (HIGH - LOW) * BINS_PER_DECADE
TENSORS = "statistics.safetensors"
META = "statistics.json"


def log_histogram(logs: torch.Tensor) -> torch.Tensor:
    """Counts [BINS + 2] of log10 values: one bin below LOW, BINS of 1/BINS_PER_DECADE from LOW
    to HIGH, one above HIGH (values outside are clamped into those two)."""
    step = 1.0 / BINS_PER_DECADE
    clamped = logs.float().clamp(LOW - step / 2, HIGH + step / 2)
    return torch.histc(clamped, bins=BINS + 2, min=LOW - step, max=HIGH + step).double().cpu()


def logs_of(values: torch.Tensor) -> torch.Tensor:
    """log10 of values >= 0 (zeros at -30: the bin below the range)."""
    return values.float().clamp_min(1e-30).log10()


def quantile(counts: torch.Tensor, level: float) -> float:
    """t with a `level` share of the counted values at or below it (see the module docstring)."""
    cumulative = counts.cumsum(0)
    target = level * float(cumulative[-1])
    index = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=cumulative.dtype)))
    if index == 0 or target <= 0:
        return 0.0
    index = min(index, BINS + 1)
    if index == BINS + 1:
        return 10.0 ** HIGH
    below = float(cumulative[index - 1])
    within = (target - below) / max(float(counts[index]), 1.0)
    return 10.0 ** (LOW + (index - 1 + within) / BINS_PER_DECADE)


def column_norms(loaded: LoadedModel) -> dict[Slot, torch.Tensor]:
    """||W[:, i]||_2 of the weights reading each slot, stacked: [L, U] per slot."""
    model, adapter = loaded.model, loaded.adapter
    per_slot = {Slot.attention_input: adapter.attention_input_modules(model),
                Slot.head_context: [[m] for m in adapter.head_context_modules(model)],
                Slot.mlp_input: adapter.mlp_input_modules(model),
                Slot.neuron_activation: [[m] for m in adapter.neuron_activation_modules(model)]}
    with torch.no_grad():
        return {slot: torch.stack([torch.cat([m.weight.float() for m in linears]).norm(dim=0) for linears in layers])
                for slot, layers in per_slot.items()}


@dataclass
class CalibrationStatistics:
    counts: dict[str, torch.Tensor]  # "<score>/<slot>" -> [L, BINS + 2]
    norms: dict[Slot, torch.Tensor]  # slot -> [L, U] column norms
    tokens: int  # calibration tokens counted

    def threshold(self, score: str, slot: Slot, layer: int, level: float) -> float:
        return quantile(self.counts[f"{score}/{slot.value}"][layer], level)

    def save(self, folder: Path) -> None:
        tensors = {f"counts/{k}": v for k, v in self.counts.items()}
        tensors.update({f"norms/{slot.value}": v for slot, v in self.norms.items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / TENSORS))
        (folder / META).write_text(json.dumps({"tokens": self.tokens, "bins_per_decade": BINS_PER_DECADE,
                                               "range_log10": [LOW, HIGH]}))

    @classmethod
    def load(cls, folder: Path) -> "CalibrationStatistics":
        tensors = load_file(str(folder / TENSORS))
        meta = json.loads((folder / META).read_text())
        counts = {k[len("counts/"):]: v for k, v in tensors.items() if k.startswith("counts/")}
        norms = {Slot(k[len("norms/"):]): v for k, v in tensors.items() if k.startswith("norms/")}
        return cls(counts, norms, meta["tokens"])


class _Collector:
    """Hooks adding each batch's real tokens to the histograms."""

    def __init__(self, loaded: LoadedModel, norms: dict[Slot, torch.Tensor]):
        self.loaded = loaded
        self.norms = norms
        layers = loaded.shape.num_layers
        self.counts = {f"{score}/{slot.value}": torch.zeros(layers, BINS + 2, dtype=torch.float64)
                       for score in ("magnitude", "weighted") for slot in Slot}  # and gate/neuron_activation
        self.counts[f"gate/{Slot.neuron_activation.value}"] = torch.zeros(layers, BINS + 2, dtype=torch.float64)
        self.log_norms = {slot: logs_of(n).to(loaded.device) for slot, n in norms.items()}
        self.sampled = None  # [B, T] the batch's sampled real tokens

    def add(self, key: str, layer: int, logs: torch.Tensor) -> None:
        self.counts[key][layer] += log_histogram(logs)

    def slot_hook(self, slot: Slot, layer: int, gated: bool) -> Callable:
        def hook(_module, args) -> None:
            x = args[0]
            x = x.view(*self.sampled.shape, -1)[self.sampled] if x.dim() == 2 else x[self.sampled]  # [n, U]
            logs = logs_of(x.abs())
            self.add(f"magnitude/{slot.value}", layer, logs)
            self.add(f"weighted/{slot.value}", layer, logs + self.log_norms[slot][layer])
            if slot == Slot.neuron_activation and not gated:
                self.add(f"gate/{slot.value}", layer, logs)

        return hook

    def gate_hook(self, layer: int, activation) -> Callable:
        def hook(_module, _args, out) -> None:
            self.add(f"gate/{Slot.neuron_activation.value}", layer, logs_of(activation(out[self.sampled]).abs()))

        return hook

    def install(self) -> list:
        model, adapter = self.loaded.model, self.loaded.adapter
        gates = adapter.gate_modules(model)
        firsts = {Slot.attention_input: [ms[0] for ms in adapter.attention_input_modules(model)],
                  Slot.head_context: adapter.head_context_modules(model),
                  Slot.mlp_input: [ms[0] for ms in adapter.mlp_input_modules(model)],
                  Slot.neuron_activation: adapter.neuron_activation_modules(model)}
        handles = [module.register_forward_pre_hook(self.slot_hook(slot, layer, gates is not None))
                   for slot, modules in firsts.items() for layer, module in enumerate(modules)]
        for layer, (gate, activation) in enumerate(gates or []):
            handles.append(gate.register_forward_hook(self.gate_hook(layer, activation)))
        return handles


@torch.no_grad()
def collect_statistics(loaded: LoadedModel, encoded: list[EncodedExample], batch_size: int,
                       positions: Optional[list[list[int]]] = None, progress: bool = True) -> CalibrationStatistics:
    """Histograms over the tokens of `encoded` at `positions` (per example; None: every real
    token), from dense forwards of right-padded batches."""
    norms = column_norms(loaded)
    collector = _Collector(loaded, norms)
    handles = collector.install()
    pad = loaded.tokenizer.pad_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    tokens = 0
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="calibration statistics", disable=not progress):
            chosen = order[start:start + batch_size]
            rows = [encoded[i].input_ids for i in chosen]
            length = max(len(r) for r in rows)
            ids = torch.full((len(rows), length), pad, dtype=torch.long)
            valid = torch.zeros_like(ids, dtype=torch.bool)
            sampled = torch.zeros_like(valid)
            for r, (i, row) in enumerate(zip(chosen, rows)):
                ids[r, :len(row)] = torch.tensor(row)
                valid[r, :len(row)] = True
                sampled[r, positions[i] if positions is not None else slice(0, len(row))] = True
            collector.sampled = sampled.to(loaded.device)
            loaded.model(input_ids=ids.to(loaded.device), attention_mask=valid.long().to(loaded.device),
                         logits_to_keep=1)
            tokens += int(sampled.sum())
    finally:
        for handle in handles:
            handle.remove()
    return CalibrationStatistics(collector.counts, {k: v.cpu() for k, v in norms.items()}, tokens)
