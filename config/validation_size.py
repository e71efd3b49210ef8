"""How much does the size of the validation split change the answer? The headline's transfer
trials at 100, 300 and 1,000 labels, selecting their best epoch once on a budget-sized
validation split and once on the whole held-out pool (BENCHMARKS.md, "Budget-sized validation
against the whole pool").

    python misc/render_syn.py --code 1111 --n 10000 --res 32 -o 1111
    python main.py -r validation_size -e validation_size -q
    python misc/utility_figure.py -e validation_size --stage 'transfer_*'

Stage `pretrain`: the headline's rotation pretraining (ResNet-9 of width 8, 15 epochs on the
8,000 training images of 1111). Stages `transfer_budget` and `transfer_pool`: from scratch and
from that backbone, 5 seeds, each seed on its own labelled images, the headline's schedule and
batch sizes, testing the best validation epoch's weights once at the end. They differ only in
validation: `transfer_budget` picks the best epoch on a fifth as many labelled images as the
budget (the headline's choice: 20 at 100 labels), `transfer_pool` on all 2,000 held-out images,
labels that a study with 100 labels would not have. 1 + 30 + 30 trials.
"""

from ray import tune

BUDGETS = [100, 300, 1000]
SEEDS = [0, 1, 2, 3, 4]


def transfer(name: str, valid_fraction: float | None) -> dict:
    return {"name": name, "pretrained_from": "pretrain",
            "search_space": {
                "gin_config": "syn/r9/transfer",
                "seed": tune.grid_search(SEEDS),
                "BaseDataset.semisupervised": tune.grid_search(BUDGETS),
                "BaseDataset.valid_fraction": valid_fraction,  # None: the whole pool
                "dataloader.batch_size": tune.sample_from(
                    lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
                "session.test_when": "best",
            }}


metric, mode = "mean_accuracy", "max"
search_space = {"BaseDataset.num_valid": 2000, "ResNet.width": 8}  # the validation pool, as in the headline
stages = [
    {"name": "pretrain", "snapshot_name": "rotate",
     "search_space": {
         "gin_config": "syn/r9/rotate",
         "SynDataset.dataset_choice": "1111",
         "session.test_iters": 0,
         "scheduler.milestones": [1, 15],
     }},
    transfer("transfer_budget", 0.2),
    transfer("transfer_pool", None),
]
