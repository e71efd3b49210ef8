"""Does linear evaluation predict fine-tuning? Four methods and scratch, ranked both ways.

    python misc/render_syn.py --code 1111 --n 10000 --res 32 -o 1111
    python main.py -r linear_vs_finetune -e linear_vs_finetune -q
    python misc/rank_figure.py -e linear_vs_finetune -o docs/linear_vs_finetune

Stage `pretrain`: rotation prediction, SimCLR, MoCo v2 and BYOL on the 8,000 training images of
1111 (labels unused), ResNet-9 of width 8, 15 epochs each (the headline's recipe).
Stage `linear`: a probe grid (config/syn/r9/probe_grid.gin) on each frozen backbone and on a
random one whose BatchNorm statistics are calibrated on the images: 3 learning rates x 2 weight
decays per budget, the best head by validation accuracy. Stage `finetune`: the whole network
fine-tuned (config/syn/r9/transfer.gin) from each backbone and from scratch. Both at 100 and
1,000 labels, 3 seeds, each seed labelling its own images (the same in both stages) and
selecting on a budget-sized validation split (a fifth of the budget). misc/rank_figure.py ranks
the five sources by test accuracy under each protocol and gives Spearman's rank correlation
between the rankings, with a bootstrap interval over seeds.
"""

from ray import tune

BUDGETS = [100, 1000]
SEEDS = [0, 1, 2]

metric, mode = "mean_accuracy", "max"
search_space = {"BaseDataset.num_valid": 2000, "ResNet.width": 8}  # in every stage: the validation pool, the width
stages = [
    {"name": "pretrain",
     "search_space": {
         "gin_config": tune.grid_search(["syn/r9/rotate", "syn/r9/simclr", "syn/r9/moco", "syn/r9/byol"]),
         "SynDataset.dataset_choice": "1111",
         "session.test_iters": 0,
         "scheduler.milestones": [1, 15],  # epochs
     }},
    {"name": "linear", "pretrained_from": "pretrain",
     "search_space": {"gin_config": "syn/r9/probe_grid", "seed": tune.grid_search(SEEDS)}},
    {"name": "finetune", "pretrained_from": "pretrain",
     "search_space": {
         "gin_config": "syn/r9/transfer",
         "seed": tune.grid_search(SEEDS),
         "BaseDataset.semisupervised": tune.grid_search(BUDGETS),
         "BaseDataset.valid_fraction": 0.2,
         "dataloader.batch_size": tune.sample_from(
             lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
         "session.test_when": "best",
     }},
]
