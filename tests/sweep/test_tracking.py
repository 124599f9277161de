"""W&B metrics of a row: the job's own selection and dense on the sparsity axis, a baseline
selection's apart (they share the levels)."""

from shadow_sweep.sweep.tracking import point_metrics


def test_a_baseline_selections_metrics_are_kept_apart_from_the_jobs_own():
    own = {"stage": "evaluate", "predictor": "shadowllm", "job_predictor": "shadowllm", "sparsity": 0.5,
           "acc_mean": 0.6, "bytes_fraction": 0.7, "deployable": True, "acc/copa": 0.5}
    dense = {**own, "predictor": "dense", "sparsity": 0.0, "bytes_fraction": 1.0}
    baseline = {**own, "predictor": "teal", "acc_mean": 0.55}
    assert point_metrics(own) == {"sparsity": 0.5, "acc_mean": 0.6, "bytes_fraction": 0.7, "acc/copa": 0.5}
    assert point_metrics(dense)["bytes_fraction"] == 1.0
    assert point_metrics(baseline) == {"sparsity": 0.5, "baseline/teal/acc_mean": 0.55,
                                       "baseline/teal/bytes_fraction": 0.7, "baseline/teal/acc/copa": 0.5}
