"""Does the utility of pretraining depend on the data? The headline's question on four sets.

    for c in 0000 1000 0110 1111; do python misc/render_syn.py --code $c --n 10000 --res 32 -o $c; done
    python main.py -r pretraining_data -e pretraining_data -q
    python misc/utility_figure.py -e pretraining_data --stage 'transfer_*' -o docs/pretraining_data

Four synthetic sets that differ in which factors of variation vary per image (README,
"Synthetic datasets"): 0000 (none: each class has one colour, viewpoint and light and no
texture), 1000 (texture), 0110 (colour and viewpoint) and 1111 (all four). For each set, stage
`pretrain_<code>` pretrains ResNet-9 (width 8) with rotation prediction on its 8,000 training
images (labels unused, 5 epochs), and stage `transfer_<code>` fine-tunes the whole network on
the same set at 100, 300 and 1,000 labels, from scratch and from that backbone, 3 seeds: each
seed labels its own images and selects on a budget-sized validation split (a fifth of the
budget, from the 2,000 held-out images). Utility can then be read against which factors vary.
The scale is set by the 2-core CPU's 45 minutes: 5 pretraining epochs, not the headline's 15
(a rotation epoch takes 22 to 30 s there; 8 epochs made the whole study 49 minutes at d581d02),
and budgets up to 1,000 (where the headline's scratch accuracy is already 0.98).
"""

from ray import tune

CODES = ["0000", "1000", "0110", "1111"]
BUDGETS = [100, 300, 1000]
SEEDS = [0, 1, 2]

metric, mode = "mean_accuracy", "max"
search_space = {"BaseDataset.num_valid": 2000, "ResNet.width": 8}
stages = []
for code in CODES:
    stages += [
        {"name": f"pretrain_{code}", "snapshot_name": "rotate",
         "search_space": {"gin_config": "syn/r9/rotate", "SynDataset.dataset_choice": code,
                          "session.test_iters": 0, "scheduler.milestones": [1, 5]}},  # epochs
        {"name": f"transfer_{code}", "pretrained_from": f"pretrain_{code}",
         "search_space": {
             "gin_config": "syn/r9/transfer",
             "SynDataset.dataset_choice": code,
             "seed": tune.grid_search(SEEDS),
             "BaseDataset.semisupervised": tune.grid_search(BUDGETS),
             "BaseDataset.valid_fraction": 0.2,
             "dataloader.batch_size": tune.sample_from(
                 lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
             "session.test_when": "best",
         }},
    ]
