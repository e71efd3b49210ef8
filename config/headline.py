"""The headline study at reduced scale: how many labels does pretraining save on synthetic shapes?

    python misc/render_syn.py --code 1111 --n 10000 --res 32 -o 1111
    python main.py -r headline -e headline -q
    python misc/utility_figure.py -e headline -o docs/headline

Stage `pretrain`: rotation prediction and SimCLR on the 8,000 training images (labels unused) of
1111 (ten solids; colour, texture, lighting and viewpoint all vary), ResNet-9 of width 8.
Stage `transfer`: the whole network fine-tuned on 5 label budgets, from 100 images to the full
training split, from scratch and from each pretrained backbone, 5 seeds each: 75 trials of 400
steps (config/syn/r9/transfer.gin). Each seed labels its own class-balanced images (nested:
its 100 are among its 300), the same for scratch and pretrained trials of that seed, and picks
its best epoch on a budget-sized validation split: a fifth as many labelled images as the
budget (20 at 100 labels), drawn per seed from the 2,000 images held out of training. Every
trial reports the test accuracy of its best validation epoch (`test_at_best`), which the
utility figure compares.
"""

from ray import tune

BUDGETS = [100, 300, 1000, 3000, 8000]  # labelled training images; 8,000 is the whole training split
SEEDS = [0, 1, 2, 3, 4]

metric, mode = "mean_accuracy", "max"  # the validation accuracy picks each trial's best epoch
# in both stages: 2,000 images held out of training (the validation pool), ResNet-9 of width 8
search_space = {"BaseDataset.num_valid": 2000, "ResNet.width": 8}
stages = [
    {"name": "pretrain",
     "search_space": {
         "gin_config": tune.grid_search(["syn/r9/rotate", "syn/r9/simclr"]),
         "SynDataset.dataset_choice": "1111",
         "session.test_iters": 0,
         "scheduler.milestones": [1, 15],  # epochs
     }},
    {"name": "transfer", "pretrained_from": "pretrain",
     "search_space": {
         "gin_config": "syn/r9/transfer",
         "seed": tune.grid_search(SEEDS),
         "BaseDataset.semisupervised": tune.grid_search(BUDGETS),
         "BaseDataset.valid_fraction": 0.2,  # validation images per labelled training image
         # a quarter of the budget per batch (16 to 128 images), so every budget takes real steps
         "dataloader.batch_size": tune.sample_from(
             lambda spec: min(128, max(16, spec.config["BaseDataset.semisupervised"] // 4))),
         "session.test_when": "best",  # test the best validation epoch's weights once, at the end
     }},
]
