"""TEAL's greedy allocation of levels (`sparsity.allocation=greedy`, after teal/greedyopt.py): per
layer, the same share of weight bytes skipped as the uniform level, spread over the layer's
inputs so that the layer's output moves least.

Per layer l, on the calibration tokens' dense layer inputs (one captured call of the decoder
layer, replayed alone): start with every input at level 0; each step raises the level of one
input s by LEVEL_STEP (to at most CAP), the one whose raise costs the least squared error of
the layer's output (against its dense output) per weight byte it saves: (error after - error
now) / (LEVEL_STEP w_s / W), w_s the weight entries that read input s (q/k/v: (H + 2 KV) d D;
o: D H d; gate/up: 2 I D, or I D without a gate; down: D I) and W their sum, so that the
layer's byte-weighted level sum_s w_s level_s / W is what the step buys. (TEAL raises each
input by a step inversely proportional to its weight, so that every step buys the same bytes;
with four inputs of unequal size that step is 0.27 of a level for o on SmolLM2, too coarse.)
The path is recorded until the byte-weighted level reaches MAX_TARGET, once per model,
calibration set, selector and rule (the stage `allocation`); a target is read off at the first
step reaching it (`levels_at`).
"""

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from shadow_sweep.data.calibration import EncodedExample
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.selectors.base import BLOCK_SLOTS
from shadow_sweep.selectors.teal import TealSelector
from shadow_sweep.selectors.traffic import LinearSizes

LEVEL_STEP = 0.05  # one input's level raise per step
MAX_TARGET = 0.9  # the byte-weighted level the path is recorded to
CAP = 0.95  # no input is raised above this
TOKENS = 1024  # calibration tokens the layer errors are measured on


def slot_weights(sizes: LinearSizes) -> dict[Slot, int]:
    """Weight entries reading each input of a layer."""
    s = sizes
    up_rows = (2 if s.gated else 1) * s.neurons
    return {Slot.attention_input: (s.heads + 2 * s.kv_heads) * s.head_dim * s.hidden,
            Slot.head_context: s.hidden * s.heads * s.head_dim, Slot.mlp_input: up_rows * s.hidden,
            Slot.neuron_activation: s.hidden * s.neurons}


@dataclass
class GreedyPath:
    slots: list[Slot]
    weighted: torch.Tensor  # [L, steps + 1] byte-weighted level after each step (0 first; the last repeated)
    levels: torch.Tensor  # [L, steps + 1, slots] each input's level there

    def levels_at(self, target: float) -> dict[Slot, torch.Tensor]:
        """Each input's level [L] at the first step reaching `target` (its last step where none
        does; layers the search skipped: the target itself)."""
        reaches = self.weighted >= target - 1e-6  # [L, steps + 1]
        last = self.weighted.shape[1] - 1
        reached = torch.where(reaches.any(1), reaches.float().argmax(1), torch.full_like(reaches[:, 0], last).long())
        chosen = self.levels[torch.arange(len(reached)), reached]  # [L, slots]
        searched = self.weighted[:, -1] > 0
        chosen = torch.where(searched[:, None], chosen, torch.full_like(chosen, target))
        return {slot: chosen[:, i] for i, slot in enumerate(self.slots)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weighted": self.weighted, "levels": self.levels}


def _captured_calls(loaded, encoded: list[EncodedExample]) -> tuple[list, torch.Tensor]:
    """A dense forward over up to TOKENS calibration tokens, right-padded: each decoder layer's
    (args, kwargs, output) and the real tokens [B, T]."""
    rows, total = [], 0
    for example in encoded:
        if total >= TOKENS:
            break
        rows.append(example.input_ids[:TOKENS - total])
        total += len(rows[-1])
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), loaded.tokenizer.pad_token_id, dtype=torch.long)
    valid = torch.zeros_like(ids, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        valid[r, :len(row)] = True
    calls = []
    layers = loaded.adapter.decoder_layers(loaded.model)
    handles = [layer.register_forward_hook(lambda _m, args, kwargs, out: calls.append((args, kwargs, out)),
                                           with_kwargs=True) for layer in layers]
    try:
        with torch.no_grad():
            loaded.model(input_ids=ids.to(loaded.device), attention_mask=valid.long().to(loaded.device),
                         use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return calls, valid.to(loaded.device)


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def greedy_path(selector: TealSelector, encoded: list[EncodedExample], progress: bool = True) -> GreedyPath:
    """The greedy path of every layer the selector selects (its rule and score; see the module
    docstring)."""
    loaded = selector.point.loaded
    shape = loaded.shape
    slots = [slot for block in selector.blocks for slot in BLOCK_SLOTS[block]]
    weights = slot_weights(LinearSizes.of(loaded.model, loaded.adapter, shape))
    share = torch.tensor([float(weights[slot]) for slot in slots])
    share = share / share.sum()  # each input's share of the layer's weight bytes
    steps = int(len(slots) * CAP / LEVEL_STEP) + 1  # enough to raise every input to CAP
    calls, valid = _captured_calls(loaded, encoded)
    layers = loaded.adapter.decoder_layers(loaded.model)
    weighted = torch.zeros(shape.num_layers, steps + 1)
    levels = torch.zeros(shape.num_layers, steps + 1, len(slots))
    masks = LinearInputMasks(loaded.model, loaded.adapter, shape)
    trial = {}

    def reader(slot: Slot):
        def read(layer: int, x: torch.Tensor) -> None:
            level = trial.get(slot, 0.0)
            if level > 0.0:
                masks.slots[slot][layer] = selector.channel_rule(slot, layer, level).mask(x)

        return read

    def error(layer: int, candidate: torch.Tensor) -> float:
        """The layer's squared output error with its inputs at `candidate` levels."""
        nonlocal trial
        args, kwargs, dense = calls[layer]
        trial = dict(zip(slots, candidate.tolist()))
        masks.clear()
        masks.dense_tokens = torch.zeros_like(valid)
        out = _output(layers[layer](*args, **kwargs))
        return float(((out - _output(dense)).float().pow(2).sum(-1) * valid).sum())

    with masks:
        for layer in tqdm(range(selector.first, shape.num_layers), desc="greedy allocation", disable=not progress):
            masks.readers = {(slot, layer): [reader(slot)] for slot in slots}
            current = torch.zeros(len(slots))
            now = 0.0
            for step in range(1, steps + 1):
                if float((current * share).sum()) >= MAX_TARGET or bool((current >= CAP).all()):
                    weighted[layer, step:] = weighted[layer, step - 1]
                    levels[layer, step:] = current
                    break
                costs = torch.full((len(slots),), float("inf"))
                errors = torch.zeros(len(slots))
                for i in range(len(slots)):
                    if current[i] >= CAP:
                        continue
                    candidate = current.clone()
                    candidate[i] = min(CAP, float(current[i]) + LEVEL_STEP)
                    errors[i] = error(layer, candidate)
                    costs[i] = (errors[i] - now) / (float(candidate[i] - current[i]) * share[i])
                best = int(costs.argmin())
                current[best] = min(CAP, float(current[best]) + LEVEL_STEP)
                now = float(errors[best])
                levels[layer, step] = current
                weighted[layer, step] = float((current * share).sum())
    return GreedyPath(slots, weighted, levels)
