"""The utility figure and table of a study: accuracy and utility of pretraining against labels.

    python misc/utility_figure.py -e headline                  # prints the table
    python misc/utility_figure.py -e headline -o docs/headline # also docs/headline_{utility,accuracy}.png

Reads the trials of the study's transfer stage (`--stage`), the test score at the best
validation epoch (`test_at_best`) by source, label budget and seed, and prints one Markdown
row per source and budget: accuracy and utility with their bootstrap 95% CIs over seeds
(see `util.vis.summary`). A utility marked `>=` is a lower bound (the pretrained accuracy is above
every scratch accuracy), `<=` an upper bound (below the smallest budget's), `?` both among the seeds.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfstudy.config import first_line  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from util import vis  # noqa: E402


def markdown(table) -> str:
    lines = ["| source | labels | seeds | test accuracy [95% CI] | utility [95% CI] |", "| --- | --- | --- | --- | --- |"]
    for (source, budget), row in table.iterrows():
        accuracy = f"{row.accuracy:.3f} [{row.accuracy_lo:.3f}, {row.accuracy_hi:.3f}]"
        utility = "" if source == vis.SCRATCH else \
            f"{row.bound}{row.utility:.2f} [{row.utility_lo:.2f}, {row.utility_hi:.2f}]".strip()
        lines.append(f"| {source} | {int(budget)} | {int(row.seeds)} | {accuracy} | {utility} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp_id", required=True, help="the study's experiment name")
    parser.add_argument("--stage", default="transfer", help="the stage whose trials are compared (default: transfer)")
    parser.add_argument("-o", "--output", default=None, help="write <OUTPUT>_utility.png and <OUTPUT>_accuracy.png")
    args = parser.parse_args(argv)
    try:
        frame = vis.load_experiment(args.exp_id)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    stages = sorted(set(frame["stage"]) - {""}) if "stage" in frame else []
    trials = frame[frame["stage"] == args.stage] if args.stage in stages else frame.iloc[:0]
    if trials.empty:
        print(f"error: experiment '{args.exp_id}' has no stage '{args.stage}' (stages: {', '.join(stages) or 'none'}):"
              " name one with --stage", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = vis.summary(trials)
        except ValueError as err:  # e.g. no scratch trials to compare with
            for warning in {str(w.message) for w in caught}:  # they say why trials were left out
                print(f"warning: {warning}", file=sys.stderr)
            print(f"error: stage '{args.stage}' of '{args.exp_id}': {first_line(err)}", file=sys.stderr)
            return 2
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            vis.utility_plot(trials, f"{output}_utility.png")
            vis.accuracy_plot(trials, f"{output}_accuracy.png")
    for warning in {str(w.message) for w in caught}:
        print(f"warning: {warning}", file=sys.stderr)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
