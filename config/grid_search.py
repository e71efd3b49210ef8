"""A sweep over datasets and label budgets: 2 datasets x 4 budgets = 8 trials.

CIFAR-10 needs its python release under DATA_DIR/cifar (see README); drop it from
`gin_config` below to sweep the offline digits alone.
"""

from ray import tune

search_space = {
    "gin_config": tune.grid_search(["digits/r9/classify", "cifar/r9/classify"]),
    "BaseDataset.semisupervised": tune.grid_search([50, 100, 500, 1000]),  # labelled training images
    # small budgets get small batches, so an epoch still has several steps
    "dataloader.batch_size": tune.sample_from(lambda spec: min(128, spec.config["BaseDataset.semisupervised"] // 4)),
}
checkpoint_at_end = True
checkpoint_frequency = 1  # epochs between checkpoints (the default): a crash loses at most one epoch
max_failures = 2  # retries of a failed trial, each from its last checkpoint (the default)
