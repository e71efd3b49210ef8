"""Does linear evaluation rank pretraining sources as fine-tuning does? The table and figure of
config/linear_vs_finetune.py (or any study with a linear-probe and a fine-tuning stage).

    python misc/rank_figure.py -e linear_vs_finetune                              # prints the table
    python misc/rank_figure.py -e linear_vs_finetune -o docs/linear_vs_finetune   # also <OUTPUT>.png

For every label budget both stages have: each source's mean test accuracy at its best validation
epoch (`test_at_best`; of a probe grid, the best head by validation accuracy) over seeds, under
linear evaluation (`--linear`) and fine-tuning (`--finetune`), with its rank (1: the best), and
Spearman's rank correlation between the two rankings with a 95% bootstrap interval over seeds
(resampled jointly: a seed labels the same images in both stages; `util.ranks`). A line above
the table, and the PNG's metadata, give the provenance (`util.provenance`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from selfstudy.config import first_line  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from util import vis  # noqa: E402
from util.provenance import figure_output, figure_provenance, save_figures  # noqa: E402
from util.ranks import rank_agreement, ranks  # noqa: E402

BUDGET = "BaseDataset.semisupervised"


def agreement(points: dict[str, pd.DataFrame]) -> dict[int, dict[str, object]]:
    """Per budget both stages have, `rank_agreement` of the first stage's points against the second's."""
    first, second = points.values()
    budgets = sorted(set(first[BUDGET]) & set(second[BUDGET]))
    if not budgets:
        raise ValueError(f"the stages share no label budget ({', '.join(points)})")
    return {int(n): rank_agreement(first[first[BUDGET] == n], second[second[BUDGET] == n]) for n in budgets}


def markdown(found: dict[int, dict[str, object]], names: tuple[str, str]) -> str:
    budgets = list(found)
    header = " | ".join(f"{name} {n}" for n in budgets for name in names)
    lines = [f"| source | {header} |", "| --- |" + " --- |" * (2 * len(budgets))]
    sources = sorted({source for result in found.values() for source in result["means"]},
                     key=lambda s: (s != vis.SCRATCH, s))
    rank_of = {}
    for n, result in found.items():
        means = result["means"]
        for k in range(2):
            order = ranks([means[s][k] for s in means])
            rank_of.update({(n, k, s): int(r) if r == int(r) else r for s, r in zip(means, order)})
    for source in sources:
        cells = [f"{found[n]['means'][source][k]:.3f} ({rank_of[n, k, source]})" if source in found[n]["means"]
                 else "-" for n in budgets for k in range(2)]
        lines.append(f"| {source} | {' | '.join(cells)} |")
    lines.append("")
    for n, result in found.items():
        lines.append(f"Spearman's rho at {n} labels: {result['rho']:.2f} [{result['rho_lo']:.2f}, "
                     f"{result['rho_hi']:.2f}] ({result['sources']} sources, {result['seeds']} seeds)")
    return "\n".join(lines)


def draw(found: dict[int, dict[str, object]], names: tuple[str, str]):
    """One panel per budget: each source's fine-tuning against its linear accuracy."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.4 * len(found), 4.2), layout="constrained")
    for ax, (n, result) in zip(figure.subplots(1, len(found), squeeze=False)[0], found.items()):
        for source, (x, y) in result["means"].items():
            ax.scatter([x], [y], color="black" if source == vis.SCRATCH else None, zorder=3)
            ax.annotate(source, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        ax.set_xlabel(f"{names[0]} test accuracy")
        ax.set_ylabel(f"{names[1]} test accuracy")
        ax.set_title(f"{n} labels: Spearman's rho {result['rho']:.2f} [{result['rho_lo']:.2f}, "
                     f"{result['rho_hi']:.2f}]", fontsize="small")
        ax.grid(True, alpha=0.3)
    return figure


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp_id", required=True, help="the study's experiment name")
    parser.add_argument("--linear", default="linear", help="the linear-evaluation stage (default: linear)")
    parser.add_argument("--finetune", default="finetune", help="the fine-tuning stage (default: finetune)")
    parser.add_argument("-o", "--output", default=None, help="write <OUTPUT>.png")
    args = parser.parse_args(argv)
    names = (args.linear, args.finetune)
    try:
        output = figure_output(args.output) if args.output else None
        exp_dir = vis.experiment_dir(args.exp_id)
        frame = vis.load_experiment(exp_dir)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    stages = sorted(set(frame["stage"]) - {""}) if "stage" in frame else []
    missing = [name for name in names if name not in stages]
    if missing:
        print(f"error: experiment '{args.exp_id}' has no stage '{missing[0]}' (stages: {', '.join(stages) or 'none'}):"
              " name the stages with --linear and --finetune", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            points = {name: vis.accuracy_per_seed(frame[frame["stage"] == name]) for name in names}
            found = agreement(points)
        except ValueError as err:
            print(f"error: '{args.exp_id}': {first_line(err)}", file=sys.stderr)
            return 2
    for warning in {str(w.message) for w in caught}:
        print(f"warning: {warning}", file=sys.stderr)
    selection = vis.selection_labels(pd.concat(points.values())["valid_labels"])
    facts = figure_provenance("misc/rank_figure.py", argv, exp_dir, list(names), selection,
                              "test_at_best; Spearman's rho with 95% bootstrap intervals over seeds")
    if output:
        try:
            save_figures({output.with_name(f"{output.name}.png"): (draw(found, names),
                                                                   {**facts, "Title": f"{args.exp_id}: rankings"})})
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print(facts["Description"] + "\n")
    print(markdown(found, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
