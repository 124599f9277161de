"""A point's selection as the decode driver sees it, read off its selectors' declarations
(selectors/base.py), so that the driver (decode.generate) never knows which selector runs:

- per layer, the layout each block runs in, from the point of the block's selection
  (`LayerPlan`): `ahead` reads the kept heads' / neurons' rows (every row when nothing is
  chosen), `gate` and `input` apply the selector's rules inside the step (`step_rules`);
- where one-token steps hand a state to a selector that chooses ahead (`decode_reads`): before a
  layer (`layer_input`), before its MLP (`mlp_input`), after it (`head_context`); or the
  networks a selector that chooses ahead lets the step run itself there (`step_networks`);
- the prompt (`prefill`): one forward of the accuracy path itself (the model with the point's
  runtime installed), so the prompt's K/V and, under per_sequence, the masks chosen at its last
  token are exactly the accuracy path's.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate
from shadow_sweep.selectors.base import Block, ForwardInputs, Point, Reads, Selector
from shadow_sweep.selectors.kept import KeptUnits
from shadow_sweep.selectors.rules import ChannelRule, StepNetwork
from shadow_sweep.selectors.runtime import SelectionRuntime

STEP_READS = (Reads.layer_input, Reads.mlp_input, Reads.head_context)  # where a step can stop for a selector


@dataclass(frozen=True)
class LayerPlan:
    attention: Point = Point.ahead  # ahead: rows of the kept (or every) head; input: kept channels
    mlp: Point = Point.ahead  # ahead: rows of the kept (or every) neuron; gate; input
    rules: dict[Reads, ChannelRule] = field(default_factory=dict)  # this layer's in-step rules
    networks: dict[Reads, StepNetwork] = field(default_factory=dict)  # choices ahead made inside the step

    @property
    def in_step(self) -> bool:
        """Some selection of this layer is made inside the step."""
        return bool(self.rules or self.networks)


DENSE_PLAN = LayerPlan()


def _at_layer(per_place: dict[Reads, list], layer: int) -> dict:
    """{place: one per layer} -> {place: this layer's} where there is one."""
    return {where: items[layer] for where, items in per_place.items() if items[layer] is not None}


class DecodeSelection:
    """The decode-time view of a point's `SelectionRuntime` (see the module docstring)."""

    def __init__(self, runtime: SelectionRuntime):
        self.runtime = runtime
        self.update = runtime.update
        for selector in runtime.selectors:
            if not selector.spec.decode:
                raise ValueError(f"the sparse decode path does not run selector {selector.spec.name!r}")
        self.plans = self._plans()
        self.readers = self._readers() if self.update == MaskUpdate.per_token else {}

    def _plans(self) -> list[LayerPlan]:
        """Each layer's plan: its blocks' points, the selectors' rules and (per_token) networks."""
        attention, mlp = self.runtime.selection.points()
        rules: dict[Reads, list[Optional[ChannelRule]]] = {}
        networks: dict[Reads, list[Optional[StepNetwork]]] = {}
        for selector in self.runtime.selectors:
            rules.update(selector.step_rules())
            if self.update == MaskUpdate.per_token:
                networks.update(selector.step_networks())
        return [LayerPlan(attention, mlp, _at_layer(rules, layer), _at_layer(networks, layer))
                for layer in range(self.runtime.loaded.shape.num_layers)]

    def _readers(self) -> dict[tuple[Reads, int], list[Selector]]:
        """(place, layer) -> the selectors a per_token step hands its state to there."""
        readers: dict[tuple[Reads, int], list[Selector]] = {}
        for selector in self.runtime.selectors:
            for where, indices in selector.decode_reads().items():
                if where not in STEP_READS:
                    raise ValueError(f"selector {selector.spec.name!r} reads at {where.value}; decode steps hand "
                                     f"selectors chosen ahead only {[r.value for r in STEP_READS]}")
                for layer in indices:
                    readers.setdefault((where, layer), []).append(selector)
        return readers

    @property
    def label(self) -> str:
        return self.runtime.selection.label

    def reads(self, where: Reads, layer: int) -> list[Selector]:
        return self.readers.get((where, layer), [])

    def predictor_bytes(self) -> int:
        """Predictor weights one step reads (its selectors choose every step under per_token)."""
        per_token = self.update == MaskUpdate.per_token
        return sum(s.predictor_bytes() for s in self.runtime.selectors) if per_token else 0

    def start_step(self, token: torch.Tensor, position: int) -> KeptUnits:
        """A one-token step (token [1]) begins: the units its selectors choose at its start."""
        point = self.runtime.point
        device = token.device
        ids = token.view(1, 1)
        inputs = ForwardInputs(ids, None, torch.full((1, 1), position, device=device),
                               torch.zeros(1, dtype=torch.long, device=device))
        point.inputs = inputs
        point.masks.clear()
        chosen = KeptUnits.every(len(self.plans))
        for selector in self.runtime.selectors:
            if selector.spec.point == Point.ahead:
                selector.decode_start(inputs, chosen)
        return chosen

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, dense: bool):
        """The prompt [T] as one forward of the accuracy path (every token's masks as
        `sparsity.update` chooses them; `dense`: unmasked, the masks still chosen at its last
        token) -> (last logits [V], HF's cache, the kept units of a per_sequence point)."""
        runtime = self.runtime
        if dense:
            runtime.dense_prompt(torch.tensor([len(prompt)], device=prompt.device))
        kept = None
        with runtime:
            out = runtime.loaded.model(input_ids=prompt[None], use_cache=True)
            if self.update == MaskUpdate.per_sequence:
                kept = KeptUnits.every(len(self.plans))
                for selector in runtime.selectors:
                    kept.take(runtime.point.masks, Block.attention in selector.blocks, Block.mlp in selector.blocks)
        return out.logits[0, -1], out.cache, kept
