"""The selectors by name, and the selection of a point: which selector chooses each block.

`predictor.name` names a selector for every block it can select (the others stay dense);
`predictor.heads` / `predictor.neurons` name the attention block's / the MLP block's selector
instead (e.g. `predictor=shadowllm predictor.neurons=cats`: ShadowLLM's heads, CATS's neurons).
A point's label is the selector's name, or `<heads>+<neurons>` when the blocks were named.
"""

from dataclasses import dataclass
from typing import Optional

from shadow_sweep.config import AppConfig, ConfigError, MaskUpdate
from shadow_sweep.selectors.base import Block, Point, Selector, SelectorSpec
from shadow_sweep.selectors.cats import CatsSelector
from shadow_sweep.selectors.dejavu import DejaVuSelector
from shadow_sweep.selectors.dejavu_mlp import DejaVuMLPSelector
from shadow_sweep.selectors.dense import DenseSelector
from shadow_sweep.selectors.oracle import OracleSelector
from shadow_sweep.selectors.random import RandomSelector
from shadow_sweep.selectors.shadowllm import ShadowLLMSelector
from shadow_sweep.selectors.static import StaticSelector
from shadow_sweep.selectors.teal import TealSelector
from shadow_sweep.selectors.wina import WinaSelector

SELECTORS: dict[str, type[Selector]] = {cls.spec.name: cls for cls in (
    DenseSelector, StaticSelector, RandomSelector, ShadowLLMSelector, DejaVuSelector, DejaVuMLPSelector,
    OracleSelector, TealSelector, WinaSelector, CatsSelector)}


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Add a selector class (its `spec.name` becomes a valid `predictor.name`)."""
    SELECTORS[cls.spec.name] = cls
    return cls


def selector_class(name: str, field_name: str = "predictor.name") -> type[Selector]:
    if name not in SELECTORS:
        raise ConfigError(f"{field_name}={name!r} is not allowed: expected a registered selector, one of "
                          f"{sorted(SELECTORS)}")
    return SELECTORS[name]


def spec(name: str) -> SelectorSpec:
    return selector_class(name).spec


def decode_selectors() -> list[str]:
    """The selectors the sparse decode path runs (bench.predictors)."""
    return [name for name, cls in SELECTORS.items() if cls.spec.decode and name != "dense"]


@dataclass(frozen=True)
class PointSelection:
    """The selectors of one evaluation point, one per block."""

    heads: str  # the attention block's selector
    neurons: str  # the MLP block's selector
    label: str

    def names(self) -> list[str]:
        """Its selectors, each once (heads' first)."""
        return list(dict.fromkeys((self.heads, self.neurons)))

    def blocks_of(self, name: str) -> tuple[Block, ...]:
        return tuple(b for b, n in ((Block.attention, self.heads), (Block.mlp, self.neurons)) if n == name)

    @property
    def dense(self) -> bool:
        return self.heads == "dense" and self.neurons == "dense"

    def points(self) -> tuple[Point, Point]:
        """The points of the attention and the MLP block's selections (dense: ahead)."""
        return spec(self.heads).point, spec(self.neurons).point

    def deployable(self) -> bool:
        return all(spec(name).deployable for name in self.names())

    def fixed(self) -> bool:
        """One mask for every input (its masks the same under every update policy)."""
        return any(spec(name).fixed for name in self.names())

    def decode_updates(self, updates: list[MaskUpdate]) -> list[MaskUpdate]:
        """Those of `updates` under which the decode path runs every selector of it; a fixed
        selection (one mask for every input) is timed per_sequence only, whichever is asked for:
        its masks are the same either way."""
        specs = [spec(name) for name in self.names()]
        if not all(s.decode for s in specs):
            return []
        if self.fixed():
            return [MaskUpdate.per_sequence] if all(MaskUpdate.per_sequence in s.updates for s in specs) else []
        return [u for u in updates if all(u in s.updates for s in specs)]


DENSE = PointSelection("dense", "dense", "dense")


def selection_of(name: str, heads: Optional[str] = None, neurons: Optional[str] = None) -> PointSelection:
    """The selection that `predictor.name` = name (and the block overrides) makes."""
    blocks = selector_class(name).spec.blocks
    chosen_heads = heads or (name if Block.attention in blocks else "dense")
    chosen_neurons = neurons or (name if Block.mlp in blocks else "dense")
    for field_name, chosen, block in (("predictor.heads", chosen_heads, Block.attention),
                                      ("predictor.neurons", chosen_neurons, Block.mlp)):
        if block not in selector_class(chosen, field_name).spec.blocks:
            serving = sorted(n for n, c in SELECTORS.items() if block in c.spec.blocks)
            raise ConfigError(f"{field_name}={chosen!r} is not allowed: it selects no {block.value} units "
                              f"(selectors of that block: {serving})")
    if heads is None and neurons is None:
        return PointSelection(chosen_heads, chosen_neurons, name)
    label = chosen_heads if chosen_heads == chosen_neurons else f"{chosen_heads}+{chosen_neurons}"
    return PointSelection(chosen_heads, chosen_neurons, label)


def job_selection(cfg: AppConfig) -> PointSelection:
    return selection_of(cfg.predictor.name, cfg.predictor.heads, cfg.predictor.neurons)


def baseline_selections(cfg: AppConfig) -> list[PointSelection]:
    """`eval.baseline_selectors`, each alone, without the job's own selection and without those
    whose selectors do not serve the job's update policy (a message says so)."""
    own = job_selection(cfg)
    chosen = []
    for name in cfg.eval.baseline_selectors:
        baseline = selection_of(name)
        if (baseline.heads, baseline.neurons) == (own.heads, own.neurons) or baseline.dense:
            continue
        if any(cfg.sparsity.update not in spec(n).updates for n in baseline.names()):
            update = cfg.sparsity.update.value
            print(f"eval.baseline_selectors: {name} left out (it serves no sparsity.update={update})")
            continue
        chosen.append(baseline)
    return chosen
