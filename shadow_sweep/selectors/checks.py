"""What the selectors of a job declare, checked before anything expensive (validation.validate):
the update policies and rules each serves, a dense layer 0 where it reads it, the per-token
traces of its fit, its own rules; an allocation's selectors; the bench's selectors."""

from shadow_sweep.config import Allocation, AppConfig, MaskUpdate, require
from shadow_sweep.criteria.registry import per_token_criteria
from shadow_sweep.selectors.base import Need, Point
from shadow_sweep.selectors.registry import (PointSelection, baseline_selections, decode_selectors, job_selection,
                                             selection_of, selector_class)


def check_selection(cfg: AppConfig, selection: PointSelection) -> None:
    """What every selector of a point declares: the update policies and rules it serves, a
    dense layer 0 where it reads it, the per-token traces of its fit; then its own rules."""
    sparsity = cfg.sparsity
    for name in selection.names():
        cls = selector_class(name)
        spec = cls.spec
        require(sparsity.update in spec.updates, "sparsity.update", sparsity.update.value,
                 f"one of {[u.value for u in spec.updates]} with selector {name}")
        if sparsity.rule is not None:
            require(sparsity.rule in spec.rules, "sparsity.rule", sparsity.rule.value,
                     f"null or one of {[r.value for r in spec.rules]} with selector {name}")
        if spec.needs_dense_first_layer:
            require(sparsity.keep_first_layer_dense, "sparsity.keep_first_layer_dense", False,
                     f"true with selector {name} (it predicts layers 1..L-1)")
        own_checkpoint = cfg.predictor.checkpoint and name == cfg.predictor.name
        if Need.traces in cls.needs(cfg) and sparsity.update == MaskUpdate.per_token and not own_checkpoint:
            forms = per_token_criteria()
            require(cfg.criterion.name.value in forms, "criterion.name", cfg.criterion.name.value,
                     f"one with a per-token form ({', '.join(forms)}) with sparsity.update=per_token "
                     f"(selector {name} is fitted on per-token samples), or sparsity.update=per_sequence")
            require(cfg.calibration.positions_per_example != 0, "calibration.positions_per_example", 0,
                     "null (every position) or >= 1 with sparsity.update=per_token")
        cls.check(cfg)


def check_selectors(cfg: AppConfig) -> None:
    """The job's selection, its baselines and the bench's selectors."""
    selections = [job_selection(cfg)] + baseline_selections(cfg)
    for selection in selections:
        check_selection(cfg, selection)
    if cfg.sparsity.allocation == Allocation.greedy:
        at_input = [n for s in selections for n in s.names() if selector_class(n).spec.point == Point.input]
        require(bool(at_input), "sparsity.allocation", "greedy",
                 "uniform, or greedy with a selector at a linear's input (teal, wina)")
        require(cfg.sparsity.head_level is None and cfg.sparsity.neuron_level is None, "sparsity.head_level/neuron_level",
                (cfg.sparsity.head_level, cfg.sparsity.neuron_level),
                "null with sparsity.allocation=greedy (it spreads sparsity.level over a layer's inputs)")
    updates = [MaskUpdate(u) for u in cfg.bench.updates] or [cfg.sparsity.update]
    for name in cfg.bench.predictors:
        require(name in decode_selectors(), "bench.predictors", name,
                 f"selectors the decode path runs: {decode_selectors()}")
        require(bool(selection_of(name).decode_updates(updates)), "bench.predictors", name,
                 f"selectors the decode path runs under bench.updates {[u.value for u in updates]}: "
                 f"{[n for n in decode_selectors() if selection_of(n).decode_updates(updates)]}")


