"""Greedy decoding on the sparse path with the predictor on the critical path.

Mask update policies (`sparsity.update`, `bench.updates`):
- per_sequence: masks predicted once at the last prompt token (ShadowLLM after layer 0;
  DejaVu at each layer's input; static: fixed), the kept rows gathered once (`gather_s`),
  then the new tokens run on the sliced weights;
- per_token: masks re-predicted for every new token, K/V kept dense for every group; the
  kept rows are read in place by the fused gather-GEMV kernels when the decoder has them
  (`IndexedLayer`), else gathered again every token (eager `index_select`, a copy);
- dense: no masks, all weights (our dense path).
The prompt (`sparsity.prefill`): `sparse` runs it as the accuracy path does, per_sequence on
the sliced weights (one mask for every prompt token), per_token as one masked forward with
every token's own masks (dense compute, masks multiplied in, K/V of every group cached);
`dense` runs it unmasked (per_sequence then cuts the cache to the kept K/V groups). Either
way `prefill_s` is that time.
Layer 0 is always dense (it feeds ShadowLLM's predictor). With `graphs` (CUDA only), the
new tokens of fixed-weight updates (dense, per_sequence, static) replay a CUDA graph
captured after the prompt (decode.graphs); the capture is timed inside the prefill.
"""

import time
from dataclasses import dataclass, field

import torch

from shadow_sweep.config import Prefill
from shadow_sweep.decode.engine import SparseDecoder
from shadow_sweep.decode.graphs import GraphedStep
from shadow_sweep.decode.traffic import StepTraffic
from shadow_sweep.predictors.inference import MaskPredictor

UPDATES = ("per_sequence", "per_token", "dense")


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
    prefill_predictor_s: float = 0.0  # inside prefill_s
    prefill_gather_s: float = 0.0  # inside prefill_s
    prefill_capture_s: float = 0.0  # inside prefill_s: capturing the CUDA graph
    traffic: list[StepTraffic] = field(default_factory=list)  # bytes each new token after the first read


class Generator:
    def __init__(self, decoder: SparseDecoder, predictor: MaskPredictor | None, update: str, graphs: bool = False,
                 prefill: Prefill = Prefill.sparse):
        update = getattr(update, "value", update)
        if update not in UPDATES:
            raise ValueError(f"bench.update must be one of {UPDATES}, got {update!r}")
        if graphs and update == "per_token":
            raise ValueError("CUDA graphs need weights fixed for the sequence: update dense or per_sequence")
        self.decoder = decoder
        self.predictor = predictor
        self.update = update
        self.graphs = graphs
        self.prefill = Prefill(prefill)
        self.layout = predictor.layout if predictor else None  # None: no network (static, dense)
        self.static_weights = None
        if predictor is not None and predictor.static is not None and update != "dense":  # one gather for all
            heads, neurons = ([row.nonzero().squeeze(1) for row in m[0].bool()] for m in predictor.static)
            self.static_weights = [decoder.dense[0]] + self._select_from(1, heads, neurons, single=False)

    def _runs_before(self, layer: int) -> bool:
        return self.layout is not None and self.layout.runs_before(layer)

    def _runs_after(self, layer: int) -> bool:
        return self.layout is not None and self.layout.runs_after_layer_zero(layer)

    def _now(self) -> float:
        return clock(self.decoder.device)

    def _fused(self, single: bool) -> bool:
        return single and self.decoder.kernels is not None and self.update == "per_token"

    def _predictor_kernels(self, ids: torch.Tensor):
        """The decode kernels for the predictor's one-token network and top-k, where the kept
        rows go to the kernels too (per_token steps); else None (the masks' own ops)."""
        return self.decoder.kernels if self._fused(ids.shape[0] == 1) else None

    def _select(self, layer: int, heads: torch.Tensor, neurons: torch.Tensor, single: bool):
        """Kept query heads and neurons (ascending indices) -> the layer's weights: row indices
        for the fused kernels in one-token steps when they exist, else a gathered copy."""
        if self._fused(single):
            return self.decoder.indexed(layer, heads, neurons)
        return self.decoder.sliced(layer, heads, neurons)

    def _select_from(self, first: int, heads: list[torch.Tensor], neurons: list[torch.Tensor], single: bool) -> list:
        """_select for layers first.. from every layer's kept heads and neurons."""
        if self._fused(single):
            return self.decoder.indexed_from(first, heads, neurons)
        return [self.decoder.sliced(l, heads[l], neurons[l]) for l in range(first, self.decoder.shape.num_layers)]

    def _run(self, ids: torch.Tensor, start: int, weights: list, caches: list, run: DecodeRun, predict: bool,
             use: bool = True) -> torch.Tensor:
        """One forward over ids at positions start..; when `predict`, masks are predicted at the
        last token and `weights` take the kept rows. `use=False` computes with the dense weights
        (a dense prompt) and only chooses the masks for the tokens after it."""
        d, now = self.decoder, self._now
        positions = torch.arange(start, start + ids.shape[0], device=d.device)
        dense_kv = self.update == "per_token" or not use
        x = d.family.embed(ids, positions)
        rotation = d.family.rotation(positions, x)
        layer = 0
        while layer < d.shape.num_layers:
            if predict and self._runs_before(layer):
                began = now()
                kept = self.predictor.one_layer_kept(layer, x[-1:], self._predictor_kernels(ids))
                run.predictor_s += now() - began
                began = now()
                weights[layer] = self._select(layer, *kept, single=ids.shape[0] == 1)
                run.gather_s += now() - began
            end = self._span_end(layer, predict)
            for index in range(layer, end):
                if caches[index] is None:
                    source = d.dense[index] if dense_kv else weights[index]
                    caches[index] = d.new_cache(self.max_len, [source])[0]
            layer_weights = weights if use else d.dense
            x, context = d.run_layers(layer, end, x, positions, layer_weights, caches, rotation, dense_kv)
            if predict and self._runs_after(end - 1):
                began = now()
                heads, neurons = self.predictor.all_layers_kept(context[-1:], self._predictor_kernels(ids))
                run.predictor_s += now() - began
                began = now()
                weights[1:] = self._select_from(1, heads, neurons, single=ids.shape[0] == 1)
                run.gather_s += now() - began
            layer = end
        return d.logits(x)

    def _span_end(self, first: int, predict: bool) -> int:
        """The layers one `SparseDecoder.run_layers` call runs from `first`: up to the next layer
        whose predictor runs before it or after the layer ahead of it (all layers without one)."""
        for layer in range(first + 1, self.decoder.shape.num_layers):
            if predict and (self._runs_before(layer) or self._runs_after(layer - 1)):
                return layer
        return self.decoder.shape.num_layers

    def _masked_prompt(self, ids: torch.Tensor, caches: list, run: DecodeRun) -> torch.Tensor:
        """per_token with a sparse prefill: the prompt as one forward with every token's own
        masks (ShadowLLM from each token's layer-0 head context, DejaVu from each token's layer
        input), dense weights, K/V of every group cached."""
        d, now = self.decoder, self._now
        positions = torch.arange(ids.shape[0], device=d.device)
        x = d.family.embed(ids, positions)
        rotation = d.family.rotation(positions, x)
        predicted = None
        for layer in range(d.shape.num_layers):
            token_masks = None
            began = now()
            if self._runs_before(layer):
                token_masks = self.predictor.one_layer(layer, x)
            elif predicted is not None:
                token_masks = (predicted[0][:, layer], predicted[1][:, layer])
            run.predictor_s += now() - began
            caches[layer] = d.new_cache(self.max_len, [d.dense[layer]])[0]
            x, context = d.layer(layer, x, positions, d.dense[layer], caches[layer], rotation, d.dense[layer],
                                 token_masks=token_masks)
            if self._runs_after(layer):
                began = now()
                predicted = self.predictor.all_layers(context)  # [T, L, H], [T, L, I]
                run.predictor_s += now() - began
        return d.logits(x)

    def _prefill(self, prompt: torch.Tensor, weights: list, caches: list, run: DecodeRun, learned: bool
                 ) -> torch.Tensor:
        """The prompt pass (see the module docstring); gives the first new token's logits."""
        d = self.decoder
        if self.update == "dense":
            return self._run(prompt, 0, weights, caches, run, predict=False)
        if self.prefill == Prefill.dense:
            per_sequence = self.update == "per_sequence"
            logits = self._run(prompt, 0, weights, caches, run, predict=learned and per_sequence, use=False)
            if per_sequence:
                for layer, w in enumerate(weights):
                    if w is not d.dense[layer]:
                        caches[layer] = d.kept_cache(caches[layer], w)
            return logits
        if self.update == "per_token" and self.layout is not None:
            return self._masked_prompt(prompt, caches, run)
        return self._run(prompt, 0, weights, caches, run, predict=learned)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> DecodeRun:
        d, now = self.decoder, self._now
        prompt = prompt.to(d.device)
        self.max_len = prompt.shape[0] + new_tokens
        run = DecodeRun([], [])
        weights = list(self.static_weights or d.dense)
        caches = [None] * d.shape.num_layers
        learned = self.layout is not None and self.update != "dense"
        began = now()
        logits = self._prefill(prompt, weights, caches, run, learned)
        graphed = None
        if self.graphs:
            captured = now()
            graphed = GraphedStep(d, weights, caches, start=prompt.shape[0])
            run.prefill_capture_s = now() - captured
        run.prefill_s = now() - began
        run.prefill_predictor_s = run.predictor_s
        run.prefill_gather_s = run.gather_s
        run.predictor_s = 0.0
        run.gather_s = 0.0
        predicts = learned and self.update == "per_token"  # the predictor runs every new token
        stepped = []  # each step's layer weights, for the byte count after the timed loop
        began = now()
        for step in range(new_tokens):
            token = int(logits.argmax())
            run.tokens.append(token)
            run.logits.append(logits)
            if step == new_tokens - 1:
                break
            if graphed is not None:
                logits = graphed(token, prompt.shape[0] + step).clone()  # the graph reuses its output buffer
            else:
                logits = self._run(torch.tensor([token], device=d.device), prompt.shape[0] + step, weights, caches,
                                   run, predict=predicts)
            stepped.append(list(weights))
        run.decode_s = now() - began
        predictor_bytes = sum(p.numel() * p.element_size() for p in self.predictor.fitted.net.parameters()) \
            if predicts else 0
        run.traffic = [d.step_traffic(w, prompt.shape[0] + step + 1, self.update == "per_token", predictor_bytes)
                       for step, w in enumerate(stepped)]
        return run
