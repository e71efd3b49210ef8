"""Linear evaluation on digits: how many labels does a frozen pretrained backbone save?

    python main.py -r linear_eval -e linear_eval -q
    # in Python:
    from util import vis
    df = vis.load_experiment("linear_eval")
    vis.summary(df[df["stage"] == "probe"])     # accuracy and utility per (source, label budget)

Stage `pretrain`: rotation prediction and SimCLR on digits (labels train only their online
probes), ResNet-9 of width 16. Stage `probe`: a probe grid (config/digits/r9/probe_grid.gin:
3 peak learning rates x 2 weight decays x 3 label budgets = 18 linear heads, features encoded
once) on each frozen pretrained backbone and on a random one ('scratch'), 3 seeds: 9 trials,
162 heads. About 3.5 minutes on the 2-core CPU. The utility functions take each trial's best head per budget by validation accuracy
and compare its `test_at_best`; 'scratch' here is a linear probe of random features, whose
BatchNorm statistics are calibrated on one pass over the training images
(`Wrapper.calibrate_random`), as a pretrained backbone's are: without that, the utility would
mostly measure BatchNorm calibration.
"""

from ray import tune

metric, mode = "mean_accuracy", "max"
stages = [
    {"name": "pretrain", "checkpoint_at_end": True,
     "search_space": {"gin_config": tune.grid_search(["digits/r9/rotate", "digits/r9/simclr"])}},
    {"name": "probe", "pretrained_from": "pretrain",
     "search_space": {"gin_config": "digits/r9/probe_grid", "seed": tune.grid_search([0, 1, 2])}},
]
