"""The headline's transfer trials selecting on the fixed validation split, to compare with its
budget-sized one (BENCHMARKS.md, "Budget-sized validation against the fixed split").

    python main.py -r headline -e headline -q                          # first: its snapshots
    python main.py -r headline_fixed_valid -e headline_fixed_valid -q
    python misc/utility_figure.py -e headline_fixed_valid

One stage, `transfer`: the headline's transfer stage at 100, 300 and 1,000 labels, from scratch and from its rotation
snapshot (`headline/pretrain/rotate`), 5 seeds: 30 trials, each the same as its headline twin
(seed, labelled images, batch size, schedule, test at the best validation epoch) except that it
picks its best epoch on all 2,000 held-out validation images instead of a fifth of its budget.
"""

from ray import tune

BUDGETS = [100, 300, 1000]
SEEDS = [0, 1, 2, 3, 4]

metric, mode = "mean_accuracy", "max"
stages = [
    {"name": "transfer",
     "search_space": {
         "gin_config": "syn/r9/transfer",
         "BaseDataset.num_valid": 2000,  # the headline's validation pool, here used whole
         "ResNet.width": 8,
         "Wrapper.pretrained": tune.grid_search([None, "headline/pretrain/rotate"]),
         "seed": tune.grid_search(SEEDS),
         "BaseDataset.semisupervised": tune.grid_search(BUDGETS),
         "dataloader.batch_size": tune.sample_from(
             lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
         "session.test_when": "best",
     }},
]
