"""Load an experiment's trials into pandas; accuracy and utility of pretraining, as tables and plots.

    from util import vis
    df = vis.load_experiment("finetune")          # one row per trial (per head of a probe grid)
    hist = vis.load_history("finetune")           # one row per trial (head) and epoch
    vis.summary(df)                               # accuracy and utility per (source, label budget)
    vis.calc_utility(df)                          # utility per (source, label budget), t-interval over seeds
    vis.accuracy_plot(df, "accuracy.png")         # returns the Figure; saves it when a path is given
    vis.utility_plot(df, "utility.png")

In a notebook started in any folder, `from util import vis` works after an editable install of the
checkout (`pip install -e .` there).

The frames are those of `selfstudy.results` (its docstring says what every column holds).
`calc_utility`, `summary` and the plots take of each grid trial the best head per budget
(`best_heads`: by validation accuracy), so pass the rows as they come. `valid_labels`, where
the trials report it, is how many labelled validation images a trial picked its epoch with.

Utility of pretraining (`calc_utility`, `summary`) lives in `util.pretraining_utility`, its plots
(`accuracy_plot`, `utility_plot`) in `util.plots`, both re-exported here. They read `test_at_best`
unless given `metric=` (and say so in one line when the trials have none). For a study, pass
one stage's trials: `df[df["stage"] == "transfer"]`.
"""

from __future__ import annotations

from selfstudy.config import config_columns
from selfstudy.folders import DIVERGED
from selfstudy.results import (COMPLETED, PRETRAINED, SCRATCH, experiment_dir, load_experiment, load_history,
                               source_label, trial_dirs)
from util.plots import accuracy_plot, utility_plot
from util.pretraining_utility import TEST_METRIC, accuracy_per_seed, best_heads, calc_utility, summary, utility_per_seed
from util.provenance import selection_labels
from util.stats import labels_needed

__all__ = ["COMPLETED", "DIVERGED", "PRETRAINED", "SCRATCH", "TEST_METRIC", "accuracy_per_seed", "accuracy_plot",
           "best_heads", "calc_utility", "config_columns", "experiment_dir", "labels_needed", "load_experiment", "load_history",
           "selection_labels", "source_label", "summary", "trial_dirs", "utility_per_seed", "utility_plot"]
