"""2020-style Ray config: a HyperOpt search under an asynchronous HyperBand scheduler, imported
from Ray 0.8's module paths and with Ray 0.8's searcher keywords."""

import numpy as np
from hyperopt import hp
from ray.tune import schedulers
from ray.tune.suggest.hyperopt import HyperOptSearch

scheduler = schedulers.AsyncHyperBandScheduler(time_attr="training_iteration", metric="valid_accuracy",
                                               mode="max", max_t=2, grace_period=1)

space = {
    "scheduler.target_lrs": hp.loguniform("scheduler.target_lrs", np.log(1e-3), np.log(1e-1)),
    "scheduler.final_lr": hp.loguniform("scheduler.final_lr", np.log(1e-7), np.log(1e-4)),
    "optimizer.weight_decay": hp.loguniform("optimizer.weight_decay", np.log(1e-7), np.log(1e-3)),
    "scheduler.exp_factor": hp.uniform("scheduler.exp_factor", -.5, 2),
}

search_alg = HyperOptSearch(space, max_concurrent=2, reward_attr="valid_accuracy", random_state_seed=0)

exp_args = {
    "resume": False,
    "search_alg": search_alg,
    "scheduler": scheduler,
    "verbose": True,
    "num_samples": 2,
    "checkpoint_at_end": False,
    "resources_per_trial": {"cpu": 1},
    "config": {},
}
