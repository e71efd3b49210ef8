"""ResNet-9 classification on each of the twelve standard synthetic sets: 12 trials.

Renders nothing: render the sets first (README, "Synthetic datasets"); a missing set stops
the sweep before it starts, with the command that renders it.
"""

from ray import tune

search_space = {
    "gin_config": "syn/r9/classify",
    "SynDataset.dataset_choice": tune.grid_search(
        ["0000", "1000", "0100", "0010", "0001", "1100", "0110", "0101", "0111", "1110", "1011", "1111"]),
}
checkpoint_at_end = True
checkpoint_frequency = 1  # epochs between checkpoints (the default): a crash loses at most one epoch
max_failures = 2  # retries of a failed trial, each from its last checkpoint (the default)
