"""Greedy decoding on the sparse path, every choice of the selection on the critical path.

`Generator(decoder, selection)` decodes with a point's `DecodeSelection` (decode.selection), or
densely with none (our dense path). It never knows which selector runs; the selection's
`sparsity.update` says when choices are made:
- per_sequence: the prompt chooses the kept units at its last token; their rows are gathered
  once (`gather_s`, in the prefill) and the cache cut to the kept K/V groups, then every new
  token runs on the smaller weights;
- per_token: every new token, the selectors that choose ahead do so where they declared
  (`decode_reads`: before a layer, before its MLP, after a layer; `predictor_s`), their kept
  rows read in place by the kernels (`IndexedLayer`) or gathered again without them (eager
  `index_select`, a copy; `gather_s`); selections at the gate or at an input are made inside
  the step; K/V of every group is cached.
The prompt (`sparsity.prefill`) is one forward of the accuracy path itself: `sparse` with every
token's masks as the update chooses them, `dense` unmasked (the masks still chosen at its last
token); `prefill_s` is that pass with the copy of its K/V and the gathers. With `graphs` (CUDA
only), the new tokens of fixed-weight updates (dense, per_sequence) replay a CUDA graph
captured after the prompt (decode.graphs); the capture is timed inside the prefill.
"""

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from shadow_sweep.config import MaskUpdate, Prefill
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.graphs import GraphedStep
from shadow_sweep.decode.packs import PARTS
from shadow_sweep.decode.selection import DENSE_PLAN, DecodeSelection
from shadow_sweep.decode.traffic import StepRecord, StepTraffic
from shadow_sweep.selectors.base import Reads
from shadow_sweep.selectors.kept import KeptUnits


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work has finished (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class DecodeRun:
    tokens: list[int]
    logits: list[torch.Tensor]  # [V] per generated token (the first from the prompt)
    prefill_s: float = 0.0  # the prompt pass (gives the first new token)
    decode_s: float = 0.0  # the new tokens after the first
    predictor_s: float = 0.0  # inside decode_s
    gather_s: float = 0.0  # inside decode_s
    prefill_gather_s: float = 0.0  # inside prefill_s
    prefill_capture_s: float = 0.0  # inside prefill_s: capturing the CUDA graph
    lm_head_s: float = 0.0  # inside decode_s: the final norm and lm_head
    parts_s: dict[str, float] = field(default_factory=dict)  # inside decode_s: the C++ layer's parts (PARTS)
    records: list[StepRecord] = field(default_factory=list)  # what each new token after the first kept
    traffic: list[StepTraffic] = field(default_factory=list)  # and the bytes it read

    @property
    def choosing_s(self) -> float:
        """The time the selections made ahead took in decode_s: in Python (`predictor_s`) and as
        step networks inside the C++ layer."""
        return self.predictor_s + self.parts_s.get("step_networks", 0.0)


class Generator:
    def __init__(self, decoder: SparseDecoder, selection: Optional[DecodeSelection] = None, graphs: bool = False,
                 prefill: Prefill = Prefill.sparse):
        self.decoder = decoder
        self.selection = selection
        self.dense = selection is None
        self.update = None if self.dense else selection.update
        if graphs and self.update == MaskUpdate.per_token:
            raise ValueError("CUDA graphs need weights fixed for the sequence: our dense path or per_sequence")
        self.graphs = graphs
        self.prefill = Prefill(prefill)
        layers = decoder.shape.num_layers
        self.plans = [DENSE_PLAN] * layers if self.dense else selection.plans
        self.per_token = self.update == MaskUpdate.per_token
        self.max_len = 0

    def _now(self) -> float:
        return clock(self.decoder.device)

    def _kernels(self):
        """The decode kernels for one-token networks and top-k (per_token steps), or None."""
        return self.decoder.kernels if self.per_token else None

    def _layer_weights(self, layer: int, chosen: KeptUnits):
        """A layer's weights for the units chosen ahead (dense weights where none are): their
        rows in place for the kernels in one-token per_token steps, else a gathered copy."""
        heads = chosen.heads[layer]
        neurons = chosen.neurons[layer]
        d = self.decoder
        if heads is None and neurons is None:
            return d.dense[layer]
        in_place = self.per_token and d.kernels is not None and (d.whole_layers or not self.plans[layer].in_step)
        return d.indexed(layer, heads, neurons) if in_place else d.sliced(layer, heads, neurons)

    def _prefill(self, prompt: torch.Tensor, run: DecodeRun) -> tuple[torch.Tensor, list, list]:
        """The prompt pass -> (the first new token's logits, every layer's weights, caches)."""
        d = self.decoder
        if self.dense:
            with torch.no_grad():
                out = d.loaded.model(input_ids=prompt[None], use_cache=True)
            return out.logits[0, -1], list(d.dense), d.caches_from(out.cache, self.max_len)
        logits, past, kept = self.selection.prefill(prompt, dense=self.prefill == Prefill.dense)
        caches = d.caches_from(past, self.max_len)
        weights = list(d.dense)
        if kept is not None:  # per_sequence: gather the kept rows once, cut the cache to their groups
            began = self._now()
            for layer in range(d.shape.num_layers):
                weights[layer] = self._layer_weights(layer, kept)
                if weights[layer] is not d.dense[layer]:
                    caches[layer] = d.kept_cache(caches[layer], weights[layer])
            run.prefill_gather_s = self._now() - began
        return logits, weights, caches

    def _stops(self, where: Reads, layer: int) -> bool:
        """A per_token step returns to Python there: a selector reads, or a step network runs
        that the decoder's kernels do not run themselves (torch ops)."""
        network = where in self.plans[layer].networks and not self.decoder.whole_layers
        return network or bool(self.selection.reads(where, layer))

    def _span(self, first: int, resume: bool) -> tuple[int, bool]:
        """The layers one `run_layers` call runs from `first` in a per_token step -> (end, whether
        it stops before layer end-1's MLP): up to the next place the step returns to Python."""
        reads = self._stops
        for layer in range(first, self.decoder.shape.num_layers):
            if layer > first and reads(Reads.layer_input, layer):
                return layer, False
            if reads(Reads.mlp_input, layer) and not (layer == first and resume):
                return layer + 1, True
            if reads(Reads.head_context, layer):
                return layer + 1, False
        return self.decoder.shape.num_layers, False

    def _read(self, where: Reads, layer: int, x: torch.Tensor, chosen: KeptUnits, run: DecodeRun) -> None:
        """Hand one token's state x [1, U] to the selectors reading there, and run the step
        network there unless the kernels do (timed as predictor)."""
        if not self._stops(where, layer):
            return
        began = self._now()
        for selector in self.selection.reads(where, layer):
            selector.decode_read(where, layer, x, chosen, self._kernels())
        network = self.plans[layer].networks.get(where)
        if network is not None and not self.decoder.whole_layers:
            chosen.set(layer, *network.kept(x[-1]))
        run.predictor_s += self._now() - began

    def _chosen_step(self, token: torch.Tensor, position: int, caches: list, run: DecodeRun
                     ) -> tuple[torch.Tensor, list]:
        """One per_token step: the selectors choose as they go -> (logits, the weights it ran)."""
        d = self.decoder
        began = self._now()
        chosen = self.selection.start_step(token, position)
        run.predictor_s += self._now() - began
        positions = torch.tensor([position], device=d.device)
        x = d.family.embed(token, positions)
        rotation = d.family.rotation(positions, x)
        weights = [None] * d.shape.num_layers
        layer = 0
        resume = False
        while layer < d.shape.num_layers:
            if not resume:
                self._read(Reads.layer_input, layer, x, chosen, run)
            end, stop = self._span(layer, resume)
            began = self._now()
            for index in range(layer, end):
                weights[index] = self._layer_weights(index, chosen)
            run.gather_s += self._now() - began
            x, context, mlp_input = d.run_layers(layer, end, x, positions, weights, caches, rotation, True,
                                                 self.plans, resume, stop)
            if stop:
                self._read(Reads.mlp_input, end - 1, mlp_input, chosen, run)
                layer = end - 1
                resume = True
                continue
            self._read(Reads.head_context, end - 1, context[-1:], chosen, run)
            layer = end
            resume = False
        return self._logits(x, run), weights

    def _logits(self, x: torch.Tensor, run: DecodeRun) -> torch.Tensor:
        """The final norm and lm_head (timed as lm_head)."""
        began = self._now()
        logits = self.decoder.logits(x)
        run.lm_head_s += self._now() - began
        return logits

    def _fixed_step(self, token: torch.Tensor, position: int, weights: list, caches: list, run: DecodeRun
                    ) -> torch.Tensor:
        """One step on weights fixed for the sequence (dense, per_sequence): one span."""
        d = self.decoder
        positions = torch.tensor([position], device=d.device)
        x = d.family.embed(token, positions)
        rotation = d.family.rotation(positions, x)
        x, _, _ = d.run_layers(0, d.shape.num_layers, x, positions, weights, caches, rotation, False, self.plans)
        return self._logits(x, run)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> DecodeRun:
        d = self.decoder
        prompt = prompt.to(d.device)
        if not self.dense and self.selection.runtime.dense_positions > len(prompt):
            raise ValueError(f"sparsity.dense_positions={self.selection.runtime.dense_positions} reaches past the "
                             f"{len(prompt)}-token prompt: decode steps would be kept dense")
        self.max_len = prompt.shape[0] + new_tokens
        if d.packs is not None:
            d.packs.clear()  # a new sequence: new caches
        run = DecodeRun([], [])
        began = self._now()
        logits, weights, caches = self._prefill(prompt, run)
        graphed = None
        if self.graphs:
            captured = self._now()
            graphed = GraphedStep(d, weights, caches, start=prompt.shape[0])
            run.prefill_capture_s = self._now() - captured
        run.prefill_s = self._now() - began
        d.timings.zero_()
        began = self._now()
        for step in range(new_tokens):
            token = int(logits.argmax())
            run.tokens.append(token)
            run.logits.append(logits)
            if step == new_tokens - 1:
                break
            position = prompt.shape[0] + step
            ids = torch.tensor([token], device=d.device)
            if graphed is not None:
                logits = graphed(token, position).clone()  # the graph reuses its output buffer
            elif self.per_token:
                logits, weights = self._chosen_step(ids, position, caches, run)
            else:
                logits = self._fixed_step(ids, position, weights, caches, run)
            run.records.append(d.record(weights, self.plans, self.per_token))
        run.decode_s = self._now() - began
        run.parts_s = dict(zip(PARTS, d.timings.tolist()))
        predictor_bytes = 0 if self.dense else self.selection.predictor_bytes()
        run.traffic = [d.step_traffic(record, prompt.shape[0] + step + 1, predictor_bytes)
                       for step, record in enumerate(run.records)]
        return run
