"""The Selector interface: what chooses, per token and layer, the units a point keeps.

A selector declares (`SelectorSpec`, docs/selectors.md):
- the **blocks** it can select: `attention` (query heads or K/V groups; or the channels of the
  q/k/v input and of the head context) and `mlp` (FFN neurons; or the channels of the gate/up
  input and of the neuron activation);
- its **point**: `ahead` (before the computation it saves, from an earlier state: saves every
  row of a skipped head or neuron), `gate` (after a dense gate projection: saves up and down
  rows), `input` (at each linear's actual input: saves that linear's columns);
- what it **needs** (`needs(cfg)`): criterion traces (a fit), calibration statistics, nothing;
- the update policies and rules (top_k, threshold) it serves, whether layer 0 must stay dense,
  its network (learned selectors), whether it has a decode path, and the work its selection
  adds to a decode step.
At run time a selector instance serves one evaluation point: it reads at the points it asks
for (`reads`), keeps its own per-forward state, and writes the masks of its blocks' slots.
The driver (`selectors.runtime.SelectionRuntime`) never knows which selector runs.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Optional

import torch

from shadow_sweep.config import AppConfig, MaskUpdate, PredictorConfig, SelectionRule
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.models.loading import LoadedModel
from shadow_sweep.models.masks import LinearInputMasks, Slot
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.sparsity.policy import SparsityPolicy

if TYPE_CHECKING:
    from shadow_sweep.selectors.kept import KeptUnits
    from shadow_sweep.selectors.rules import ChannelRule, StepNetwork
    from shadow_sweep.selectors.statistics import CalibrationStatistics


class Block(str, Enum):
    attention = "attention"  # heads: the q/k/v input and the head context
    mlp = "mlp"  # neurons: the gate/up input and the neuron activation


BLOCK_SLOTS = {Block.attention: (Slot.attention_input, Slot.head_context),
               Block.mlp: (Slot.mlp_input, Slot.neuron_activation)}


class Point(str, Enum):
    ahead = "ahead"  # before the computation it saves, from an earlier state
    gate = "gate"  # after a dense gate projection: saves the up and down rows of skipped neurons
    input = "input"  # at a linear's own input: saves that linear's columns


class Need(str, Enum):
    traces = "traces"  # criterion traces and a fit on them (a network, or mean calibration scores)
    statistics = "statistics"  # calibration statistics: thresholds, column norms


class Reads(str, Enum):
    """Where a selector reads inside a forward (besides `start`): a decoder layer's input
    hidden state, one of the four slots' unmasked inputs, or the gate projection's output."""

    layer_input = "layer_input"
    attention_input = "attention_input"
    head_context = "head_context"
    mlp_input = "mlp_input"
    gate_output = "gate_output"
    neuron_activation = "neuron_activation"


ALL_UPDATES = (MaskUpdate.per_token, MaskUpdate.per_sequence)


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    blocks: tuple[Block, ...]  # the blocks it can select
    point: Point
    updates: tuple[MaskUpdate, ...] = ALL_UPDATES
    rules: tuple[SelectionRule, ...] = (SelectionRule.top_k,)  # the first is its default
    network: Optional[NetworkLayout] = None  # a learned selector's network
    needs_dense_first_layer: bool = False  # it reads layer 0 to choose the later layers
    fixed: bool = False  # one mask for every input (chosen from the calibration data)
    deployable: bool = True  # False: an analysis bound (the oracle)
    decode: bool = False  # the sparse decode path runs it (bench.predictors; see Selector.step_rules)
    adds: str = "nothing"  # the work its selection adds to a decode step
    source: str = ""


@dataclass
class ForwardInputs:
    ids: torch.Tensor  # [B, T]
    attention_mask: Optional[torch.Tensor]  # [B, T] or None
    positions: torch.Tensor  # [B, T] position of each token in its sequence
    chosen: torch.Tensor  # [B] the position whose token chooses per_sequence masks

    def at_chosen(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, ...] at each row's chosen position -> [B, 1, ...]."""
        return x[torch.arange(x.shape[0], device=x.device), self.chosen.to(x.device)][:, None]


@dataclass
class PointContext:
    """What the selectors of one evaluation point share: the model, the policy, the masks."""

    loaded: LoadedModel
    policy: SparsityPolicy
    update: MaskUpdate
    masks: LinearInputMasks
    rule: Optional[SelectionRule] = None  # sparsity.rule (None: each selector's default)
    seed: int = 0
    criterion: Optional[tuple] = None  # (Criterion, CriterionConfig): the oracle's
    statistics: Optional["CalibrationStatistics"] = None
    inputs: Optional[ForwardInputs] = None  # the current forward's
    network_calls: int = 0
    paused: bool = False  # set while an extra forward runs unmasked (the oracle's scoring pass)
    levels: dict = field(default_factory=dict)  # selector name -> {Slot: [L] levels}, from an allocation

    @contextmanager
    def unmasked(self):
        """Forwards inside run unmasked and unread (the oracle's own scoring pass)."""
        self.paused = True
        self.masks.active = False
        try:
            yield
        finally:
            self.paused = False
            self.masks.active = True


class Selector:
    """A selector serving `blocks` of one evaluation point; the base selects nothing."""

    spec: ClassVar[SelectorSpec]

    def __init__(self, point: PointContext, blocks: tuple[Block, ...], fitted: Optional[FittedPredictor] = None):
        self.point = point
        self.blocks = blocks
        self.fitted = fitted
        self.shape = point.loaded.shape
        self.rule = point.rule or self.spec.rules[0]

    @classmethod
    def needs(cls, cfg: AppConfig) -> frozenset[Need]:
        """What this selector needs under `cfg`: traces for a network, else nothing."""
        return frozenset({Need.traces}) if cls.spec.network is not None else frozenset()

    @classmethod
    def check(cls, cfg: AppConfig) -> None:
        """Selector-specific rules on `cfg` (ConfigError naming the field); the declared ones
        (update, rule, layer 0) are checked by validation for every selector."""

    @classmethod
    def chooses_causally(cls, update: MaskUpdate) -> bool:
        """Under `update`, its masks for a token depend on that token and earlier ones only (at
        most, per_sequence, on the chosen token and earlier): what lets requests share a
        context's forward (evaluation.scoring)."""
        return True

    @classmethod
    def uses_criterion(cls, cfg: AppConfig) -> bool:
        """Its masks depend on `criterion` (a fit on the criterion's traces, or the criterion itself)."""
        return Need.traces in cls.needs(cfg)

    @classmethod
    def allocates(cls, cfg: AppConfig) -> bool:
        """Its levels per layer and input come from an allocation search (selectors.allocation)."""
        return False

    @classmethod
    def key_fields(cls, cfg: AppConfig) -> dict:
        """The config fields its masks depend on besides its fit, statistics and the sparsity
        fields (part of an evaluation point's cache key)."""
        return {}

    @classmethod
    def quality_predictions(cls, fitted: FittedPredictor, targets: tuple, batch, cfg: PredictorConfig,
                            shape: ModelShape):
        """Its scores of the fit's validation rows (`targets`: their true scores, heads [N, L-1, H]
        and neurons [N, L-1, I]) as (heads, neurons), None for a kind it does not predict;
        None: no quality to report."""
        return None

    @property
    def ranking_rule(self) -> str:
        return "none"

    def reads(self) -> dict[Reads, range]:
        """Where it reads inside a forward, and at which layers."""
        return {}

    def start(self, inputs: ForwardInputs) -> None:
        """At the start of every (unheld) forward."""

    def read(self, where: Reads, layer: int, x: torch.Tensor) -> None:
        """x [B, T, U]: the input at `where` of layer `layer`, before any mask of that slot."""
        raise NotImplementedError

    def step_rules(self) -> dict[Reads, list[Optional["ChannelRule"]]]:
        """A selection at the gate or at an input: the rules a decode step applies inside each
        layer to that layer's own tensors, one per layer (None: every entry kept), at
        `attention_input`, `head_context`, `mlp_input`, `neuron_activation` or `gate_output`
        (act(gate)). The selector's masks on the accuracy path come from the same rules."""
        return {}

    def step_networks(self) -> dict[Reads, list[Optional["StepNetwork"]]]:
        """A selection made ahead by a small network per layer: the networks a per_token decode
        step runs itself at `layer_input` or `mlp_input`, one per layer (None: none there), so
        that choosing costs no return to Python; in place of `decode_reads` there."""
        return {}

    def decode_reads(self) -> dict[Reads, range]:
        """A selection made ahead: where one-token decode steps hand this selector a state to
        choose from (`layer_input` before a layer, `mlp_input` before its MLP, `head_context`
        after the layer); by default where its forward reads."""
        return self.reads() if self.spec.point == Point.ahead else {}

    def decode_start(self, inputs: ForwardInputs, chosen: "KeptUnits") -> None:
        """A decode step of one token begins: by default `start`, then the masks it set become
        `chosen` units."""
        self.start(inputs)
        chosen.take(self.point.masks, Block.attention in self.blocks, Block.mlp in self.blocks)

    def decode_read(self, where: Reads, layer: int, x: torch.Tensor, chosen: "KeptUnits", kernels=None) -> None:
        """One token's state x [1, U] at `where` of `layer`: by default the forward's `read`, then
        the masks it set at that layer become `chosen` units (a selector may choose directly;
        `kernels`: the decode kernels for its network and top-k)."""
        self.read(where, layer, x[None])
        chosen.take(self.point.masks, Block.attention in self.blocks, Block.mlp in self.blocks, [layer])

    def predictor_bytes(self) -> int:
        """Bytes of predictor weights one decode step reads for this selector's blocks."""
        return 0

    def set_layer(self, layer: int, heads: Optional[torch.Tensor], neurons: Optional[torch.Tensor]) -> None:
        """Masks of one layer, only for the blocks this selector serves."""
        self.point.masks.set_layer(layer, heads if Block.attention in self.blocks else None,
                                   neurons if Block.mlp in self.blocks else None)

    def set_all(self, heads: torch.Tensor, neurons: torch.Tensor) -> None:
        """Every layer's masks [B, L, H], [B, L, I], only for the blocks this selector serves."""
        self.point.masks.set(heads if Block.attention in self.blocks else None,
                             neurons if Block.mlp in self.blocks else None)

    def set_slot(self, slot: Slot, layer: int, mask: torch.Tensor) -> None:
        self.point.masks.slots[slot][layer] = mask

