"""A sweep over datasets and label budgets: 2 datasets x 4 budgets = 8 trials.

CIFAR-10 needs its python release under DATA_DIR/cifar (see README); drop it from
`gin_config` below to sweep the offline digits alone.
"""

from ray import tune

search_space = {
    "gin_config": tune.grid_search(["digits/r9/classify", "cifar/r9/classify"]),
    "BaseDataset.semisupervised": tune.grid_search([50, 100, 500, 1000]),  # labelled training images
    # a quarter of the budget per batch (16 to 128 images), and every budget the same 40 steps
    # per epoch (passes over a small budget wrap around), so 50 labels still train: digits at 50
    # labels reach valid accuracy 0.90 (BENCHMARKS.md, "smallest budgets")
    "dataloader.batch_size": tune.sample_from(
        lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
    "session.train_iters": 40,  # batches per epoch, whatever the budget
}
checkpoint_at_end = True
checkpoint_frequency = 1  # epochs between checkpoints (the default): a crash loses at most one epoch
max_failures = 2  # retries of a failed trial, each from its last checkpoint (the default)
