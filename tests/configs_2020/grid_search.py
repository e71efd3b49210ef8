"""2020-style Ray config: tune.run's keywords in exp_args, a grid over gin bindings in config."""

import numpy as np
from ray import tune

exp_args = {
    "stop": {"is_finished": True},
    "resume": False,
    "verbose": True,
    "checkpoint_freq": 1,
    "checkpoint_at_end": True,
    "num_samples": 1,
    "resources_per_trial": {"cpu": 1},
    "config": {
        "BaseDataset.semisupervised": tune.grid_search([60, 120]),
        "optimizer.weight_decay": tune.sample_from(lambda spec: float(np.float32(1e-5))),
    },
}
