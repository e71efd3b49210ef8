"""Pretraining method x pretraining dataset: 6 methods x the 12 standard synthetic sets = 72 trials.

Render the sets first (README, "Synthetic datasets"). Afterwards move every snapshot to a
readable place and fine-tune from it:
    python misc/move_snapshots.py -e <exp> -p '{cfg[gin_config]}/{cfg[SynDataset.dataset_choice]}' -m
    python main.py -p 'Wrapper.pretrained = "<exp>/syn/r9/rotate/1011"' 'Wrapper.ignore_pretrained_fc = True'
"""

from ray import tune

METHODS = ["rotate", "simclr", "moco", "byol", "vae", "amdim"]  # CMC needs LAB sets: see syn/r9/cmc.gin
CODES = ["0000", "1000", "0100", "0010", "0001", "1100", "0110", "0101", "0111", "1110", "1011", "1111"]

search_space = {
    "gin_config": tune.grid_search([f"syn/r9/{method}" for method in METHODS]),
    "SynDataset.dataset_choice": tune.grid_search(CODES),
}
checkpoint_at_end = True
checkpoint_frequency = 1  # epochs between checkpoints (the default): a crash loses at most one epoch
max_failures = 2  # retries of a failed trial, each from its last checkpoint (the default)
