"""The utility figure and table of a study: accuracy and utility of pretraining against labels.

    python misc/utility_figure.py -e headline                  # prints the table
    python misc/utility_figure.py -e headline -o docs/headline # also docs/headline_{utility,accuracy}.png
    python misc/utility_figure.py -e pretraining_data --stage 'transfer_*'   # a table and a panel per stage

Reads the trials of the study's transfer stage (`--stage`: a name, or a pattern with * that
matches several stages, each compared with its own scratch trials), the test score at the best
validation epoch (`test_at_best`, or `--metric`) by source, label budget and seed, and prints one
Markdown row per source and budget: accuracy and utility with their 95% t-intervals over seeds
(see `util.vis.summary`), and how many labelled validation images selection used. A utility marked
`>=` is a lower bound (some seed's pretrained accuracy is above its whole scratch curve), `<=` an
upper bound (at or below the smallest budget's, or at the top scratch measured: tied with its best, or above
its monotone fit where a scratch trial reached it), `?` both among the seeds; a bound has no interval
and says how many seeds are bounds. A line above the table, and the PNGs' metadata, give the
provenance: the commit of this checkout and of the trials, the study module's sha256, the labels
selection used and the date.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfstudy.config import first_line  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from util import vis  # noqa: E402
from util.pretraining_utility import metric_problem  # noqa: E402
from util.provenance import figure_output, figure_provenance, save_figures  # noqa: E402

OUTSIDE = {">=": "beyond the largest scratch budget",
           "<=": "at or below scratch at the smallest budget, or at the top scratch measured",
           "?": "bounds both ways: outside the scratch budgets or at the top scratch measured"}


def utility_cell(row) -> str:
    """'0.85 [0.41, 1.37]'; a bound without an interval: '>=1.20 (2 of 5 seeds beyond the largest scratch budget)'."""
    if row.bound:
        value = "?" if row.bound == "?" else f"{row.bound}{row.utility:.2f}"
        return f"{value} ({int(row.bound_seeds)} of {int(row.seeds)} seeds {OUTSIDE[row.bound]})"
    if math.isnan(row.utility_lo):  # a single seed
        return f"{row.utility:.2f}"
    return f"{row.utility:.2f} [{row.utility_lo:.2f}, {row.utility_hi:.2f}]"


def markdown(table, metric: str) -> str:
    name = "test accuracy" if metric == vis.TEST_METRIC else metric
    lines = [f"| source | labels | seeds | selection labels | {name} [95% CI] | utility [95% CI] |",
             "| --- | --- | --- | --- | --- | --- |"]
    for (source, budget), row in table.iterrows():
        accuracy = f"{row.accuracy:.3f}" + ("" if math.isnan(row.accuracy_lo) else
                                             f" [{row.accuracy_lo:.3f}, {row.accuracy_hi:.3f}]")
        utility = "" if source == vis.SCRATCH else utility_cell(row)
        selection = "not recorded" if math.isnan(row.valid_labels) else f"{int(row.valid_labels)}"
        lines.append(f"| {source} | {int(budget)} | {int(row.seeds)} | {selection} | {accuracy} | {utility} |")
    return "\n".join(lines)


def provenance(exp_dir: Path, stages: list[str], table, metric: str, argv: list[str]) -> dict[str, str]:
    """What drew the table and figures, as PNG metadata keys (see `util.provenance`)."""
    return figure_provenance("misc/utility_figure.py", argv, exp_dir, stages, vis.selection_labels(table["valid_labels"]),
                             f"{metric}, 95% t-intervals over seeds")


def draw(plot, stages: dict[str, object], metric: str | None):
    """One panel per stage (each with its own scratch trials), side by side."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * len(stages), 4.2), layout="constrained")
    for ax, (stage, trials) in zip(figure.subplots(1, len(stages), squeeze=False)[0], stages.items()):
        plot(trials, metric=metric, ax=ax)
        if len(stages) > 1:
            ax.set_title(f"{stage}: {ax.get_title()}", fontsize="small")
    return figure


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp_id", required=True, help="the study's experiment name")
    parser.add_argument("--stage", default="transfer", help="the stage whose trials are compared (default: transfer)")
    parser.add_argument("--metric", default=None, help="the score compared (default: test_at_best, which the trials "
                        "have when they evaluated the test split; else e.g. best_accuracy)")
    parser.add_argument("-o", "--output", default=None, help="write <OUTPUT>_utility.png and <OUTPUT>_accuracy.png")
    args = parser.parse_args(argv)
    try:
        output = figure_output(args.output) if args.output else None
        exp_dir = vis.experiment_dir(args.exp_id)
        frame = vis.load_experiment(exp_dir)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    stages = sorted(set(frame["stage"]) - {""}) if "stage" in frame else []
    chosen = fnmatch.filter(stages, args.stage)
    if not chosen:
        print(f"error: experiment '{args.exp_id}' has no stage '{args.stage}' (stages: {', '.join(stages) or 'none'}):"
              " name one with --stage", file=sys.stderr)
        return 2
    trials = {stage: frame[frame["stage"] == stage] for stage in chosen}
    metric = args.metric or vis.TEST_METRIC
    for stage, rows in trials.items():
        problem = metric_problem(rows, args.metric, how="--metric {}")
        if problem:
            print(f"error: stage '{stage}' of '{args.exp_id}': {problem}", file=sys.stderr)
            return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = {}
        for stage, rows in trials.items():
            try:
                tables[stage] = vis.summary(rows, metric=args.metric)
            except ValueError as err:  # e.g. no scratch trials to compare with, or no test_at_best
                for warning in {str(w.message) for w in caught}:  # they say why trials were left out
                    print(f"warning: {warning}", file=sys.stderr)
                print(f"error: stage '{stage}' of '{args.exp_id}': {first_line(err)}", file=sys.stderr)
                return 2
        facts = provenance(exp_dir, chosen, pd.concat(tables.values()), metric, argv)
        if output:
            figures = {output.with_name(f"{output.name}_{name}.png"): (
                draw(plot, trials, args.metric), {**facts, "Title": f"{args.exp_id}, stage {args.stage}: {name}"})
                for name, plot in (("utility", vis.utility_plot), ("accuracy", vis.accuracy_plot))}
            try:
                save_figures(figures)
            except UserError as err:
                for warning in {str(w.message) for w in caught}:
                    print(f"warning: {warning}", file=sys.stderr)
                print(f"error: {err}", file=sys.stderr)
                return 2
    for warning in {str(w.message) for w in caught}:
        print(f"warning: {warning}", file=sys.stderr)
    print(facts["Description"])
    for stage, table in tables.items():
        print(f"\nstage {stage}:" if len(tables) > 1 else "")
        print(markdown(table, metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
