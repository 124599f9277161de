"""Range and consistency checks that types cannot express, run right after composition and
before anything expensive: every message names the field and what it allows. This module
imports no torch: the app checks the fields before it imports the job (a typo fails in about
a second); the selectors' declarations are checked in selectors/checks.py."""

from shadow_sweep.config import AppConfig, ModelSource, require


def validate(cfg: AppConfig) -> None:
    """Every check; a failure raises ConfigError naming the field and the allowed values. The
    selectors' checks import their registry (torch) only after the fields passed."""
    check_fields(cfg)
    from shadow_sweep.selectors.checks import check_selectors  # noqa: PLC0415 (torch: after the cheap checks)

    check_selectors(cfg)


def check_fields(cfg: AppConfig) -> None:
    """The checks of single fields and their ranges: no model, selector or torch import (a
    mistake there fails as soon as Hydra has composed the config)."""
    levels = list(cfg.sparsity.levels)
    repeated = sorted({level for level in levels if levels.count(level) > 1})
    require(not repeated, "sparsity.levels", levels, f"distinct levels (repeated: {repeated})")
    for level in cfg.sparsity.levels or [cfg.sparsity.level]:
        require(0.0 <= level < 1.0, "sparsity.level(s)", level, "numbers in [0, 1)")
    for name in ("head_level", "neuron_level"):
        value = getattr(cfg.sparsity, name)
        require(value is None or 0.0 <= value < 1.0, f"sparsity.{name}", value, "null or a number in [0, 1)")
    ev = cfg.eval
    require(ev.limit is None or ev.limit >= 1, "eval.limit", ev.limit, "null or an integer >= 1")
    for name in ("batch_size", "max_length"):
        require(getattr(ev, name) >= 1, f"eval.{name}", getattr(ev, name), "an integer >= 1")
    require(ev.num_fewshot >= 0, "eval.num_fewshot", ev.num_fewshot, "an integer >= 0")
    bench = cfg.bench
    for name in ("prompt_length", "new_tokens", "repeats", "threads"):
        require(getattr(bench, name) >= 1, f"bench.{name}", getattr(bench, name), "an integer >= 1")
    require(bench.new_tokens >= 2, "bench.new_tokens", bench.new_tokens, "an integer >= 2")
    for level in bench.levels:
        require(0.0 <= level < 1.0, "bench.levels", level, "numbers in [0, 1)")
    pred = cfg.predictor
    require(0.0 < pred.validation_fraction < 1.0, "predictor.validation_fraction", pred.validation_fraction,
             "a number in (0, 1)")
    for name in ("batch_size", "depth"):
        require(getattr(pred, name) >= 1, f"predictor.{name}", getattr(pred, name), "an integer >= 1")
    require(pred.epochs is None or pred.epochs >= 1, "predictor.epochs", pred.epochs,
             "null (100 over examples, 20 over tokens) or an integer >= 1")
    require(0.0 < pred.bce_keep_fraction < 1.0, "predictor.bce_keep_fraction", pred.bce_keep_fraction,
             "a number in (0, 1)")
    require(pred.width is None or pred.width >= 1, "predictor.width", pred.width, "null (the rule) or >= 1")
    require(pred.bottleneck is None or pred.bottleneck >= 0, "predictor.bottleneck", pred.bottleneck,
             "null (width // 4), 0 (none) or >= 1")
    require(cfg.sparsity.dense_positions >= 0, "sparsity.dense_positions", cfg.sparsity.dense_positions,
             "an integer >= 0")
    ppl = cfg.perplexity
    require(ppl.window >= 2, "perplexity.window", ppl.window, "an integer >= 2")
    require(ppl.stride is None or 1 <= ppl.stride <= ppl.window, "perplexity.stride", ppl.stride, f"null or an integer in [1, window={ppl.window}]")
    require(ppl.batch_size >= 1, "perplexity.batch_size", ppl.batch_size, "an integer >= 1")
    require(ppl.max_documents is None or ppl.max_documents >= 1, "perplexity.max_documents", ppl.max_documents,
             "null (all 50 evaluation articles) or an integer >= 1")
    require(ppl.max_words_per_document is None or ppl.max_words_per_document >= 1,
             "perplexity.max_words_per_document", ppl.max_words_per_document, "null (whole articles) or an integer >= 1")
    cal = cfg.calibration
    require(bool(cal.tasks) or cal.plain_text_examples > 0, "calibration.tasks", cal.tasks,
             "at least one task, or calibration.plain_text_examples > 0")
    for name in ("examples_per_task", "max_length", "batch_size"):
        require(getattr(cal, name) >= 1, f"calibration.{name}", getattr(cal, name), "an integer >= 1")
    require(cal.positions_per_example is None or cal.positions_per_example >= 0,
             "calibration.positions_per_example", cal.positions_per_example, "null (every position) or >= 0")
    require(cal.shots >= 0 and cal.plain_text_examples >= 0, "calibration.shots/plain_text_examples",
             (cal.shots, cal.plain_text_examples), "integers >= 0")
    require(0.0 <= cfg.data_split.calibration_fraction < 1.0, "data_split.calibration_fraction",
             cfg.data_split.calibration_fraction, "a number in [0, 1)")
    crit = cfg.criterion
    require(crit.epsilon > 0, "criterion.epsilon", crit.epsilon, "a number > 0")
    require(crit.min_class_size >= 2, "criterion.min_class_size", crit.min_class_size, "an integer >= 2")
    require(crit.neuron_block is None or crit.neuron_block >= 3, "criterion.neuron_block", crit.neuron_block,
             "null (the model's head dim) or an integer >= 3 dividing the FFN width")
    model = cfg.model
    require(model.source is not None, "model.source", None,
             f"one of {[s.value for s in ModelSource]} (or set model.gguf_path / model.local_path)")
    require(model.name is not None, "model.name", None, "a name (or a path or hub id to derive it from)")
    if model.source == ModelSource.gguf_file:
        require(bool(model.gguf_path), "model.gguf_path", model.gguf_path, "a GGUF file with source=gguf_file")
    if model.source == ModelSource.gguf_package:
        require(bool(model.gguf_package and model.gguf_file), "model.gguf_package/gguf_file",
                 (model.gguf_package, model.gguf_file), "both set for source=gguf_package")
    if model.source == ModelSource.tiny:
        require("model_type" in model.tiny, "model.tiny.model_type", None, "an HF model_type, e.g. llama or opt")
