"""Predictor checkpoints: safetensors weights plus a JSON description checked on load."""

import json
from typing import Optional
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from shadow_sweep.config import ConfigError
from shadow_sweep.models.adapters import ModelShape
from shadow_sweep.predictors.fit import FittedPredictor
from shadow_sweep.predictors.layouts import NetworkLayout
from shadow_sweep.predictors.networks import GroupedMLP, MLPShape

WEIGHTS, META = "predictor.safetensors", "predictor.json"


def save_predictor(fitted: FittedPredictor, folder: Path, model: str, shape: ModelShape, criterion: str,
                   update: str = "per_token") -> None:
    tensors = {"mean_head_scores": fitted.mean_head_scores, "mean_neuron_scores": fitted.mean_neuron_scores}
    if fitted.net is not None:
        tensors.update({f"net.{k}": v for k, v in fitted.net.state_dict().items()})
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    meta = {"kind": fitted.kind, "model": model, "shape": asdict(shape), "criterion": criterion, "update": update,
            "mlp": asdict(fitted.net.shape) if fitted.net is not None else None,
            "layout": asdict(fitted.layout) if fitted.layout is not None else None, "metrics": fitted.metrics}
    (folder / META).write_text(json.dumps(meta, indent=2))


def load_predictor(folder: Path, model: str, shape: ModelShape, criterion: str,
                   update: str = "per_token", kind: Optional[str] = None) -> FittedPredictor:
    """A saved predictor, after checking it was trained for this model (name and shape),
    criterion, update policy and selector (`kind`, when given): a mismatch is an error naming
    both sides."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise ConfigError(f"predictor.checkpoint={str(folder)!r} holds no {META}")
    meta = json.loads((folder / META).read_text())
    for field, found, expected in (("model", meta["model"], model), ("shape", meta["shape"], asdict(shape)),
                                   ("criterion", meta["criterion"], criterion),
                                   ("update", meta.get("update", "per_sequence"), update),
                                   ("selector", meta["kind"], kind or meta["kind"])):
        if found != expected:
            raise ConfigError(f"predictor.checkpoint={str(folder)!r} was trained for {field} {found}, "
                              f"but this job has {field} {expected}")
    tensors = load_file(str(folder / WEIGHTS))
    layout = NetworkLayout(**meta["layout"]) if meta.get("layout") else None
    fitted = FittedPredictor(meta["kind"], tensors["mean_head_scores"], tensors["mean_neuron_scores"],
                             layout=layout, metrics=meta["metrics"])
    if meta["mlp"] is not None:
        fitted.net = GroupedMLP(MLPShape(**meta["mlp"]))
        fitted.net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
    return fitted
