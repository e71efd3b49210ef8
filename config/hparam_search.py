"""Hyperparameter search: Optuna's TPE sampler proposes the learning rate and weight decay of
ResNet-9 on the offline digits, ASHA stops the trials that fall behind: 16 trials.

    python main.py -r hparam_search -e lr_search
    python main.py -r hparam_search -g syn/r9/classify -e lr_search_syn   # another gin config

Trials report `mean_accuracy` (the validation accuracy) after every epoch; at each of ASHA's
rungs (epochs 1, 2, 4, 8, ...) a trial below the best half of those that reached it stops
(status 'stopped'). With -l the space is sampled at random and every trial runs to its end.
"""

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

search_space = {
    "scheduler.scale": tune.loguniform(0.1, 3.0),  # multiplies every learning rate of the schedule
    "optimizer.weight_decay": tune.loguniform(1e-5, 1e-2),
}
num_samples = 16  # trials the searcher proposes
metric, mode = "mean_accuracy", "max"
search_alg = OptunaSearch(seed=0)
# max_t: the most epochs a trial may run (at least the gin config's last milestone)
scheduler = ASHAScheduler(time_attr="training_iteration", max_t=100, grace_period=1, reduction_factor=2)
checkpoint_frequency = 1
