"""The utility figure and table of a study: accuracy and utility of pretraining against labels.

    python misc/utility_figure.py -e headline                  # prints the table
    python misc/utility_figure.py -e headline -o docs/headline # also docs/headline_{utility,accuracy}.png

Reads the trials of the study's transfer stage (`--stage`), the test score at the best
validation epoch (`test_at_best`, or `--metric`) by source, label budget and seed, and prints one
Markdown row per source and budget: accuracy and utility with their 95% t-intervals over seeds
(see `util.vis.summary`), and how many labelled validation images selection used. A utility marked
`>=` is a lower bound (some seed's pretrained accuracy is above its whole scratch curve), `<=` an
upper bound (at or below the smallest budget's), `?` both among the seeds; a bound has no interval
and says how many seeds are bounds. A line above the table, and the PNGs' metadata, give the
provenance: the commit of this checkout and of the trials, the study module's sha256, the labels
selection used and the date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import subprocess
import sys
import warnings
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from selfstudy import folders  # noqa: E402
from selfstudy.config import first_line  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from selfstudy.rayconfig import config_path  # noqa: E402
from util import vis  # noqa: E402

OUTSIDE = {">=": "beyond the largest scratch budget", "<=": "at or below scratch at the smallest budget",
           "?": "outside the scratch budgets, both ways"}


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


def git_describe() -> str:
    """`git describe --always --dirty` of this checkout ('unknown' outside git)."""
    try:
        out = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(paths.ROOT)) if path.is_relative_to(paths.ROOT) else str(path)


def study_module(exp_dir: Path) -> str:
    """'study config/headline.py sha256 <hex>' from experiment.json: the hash recorded when the study started
    (a plain sweep records only its Ray config's name: that file is hashed now, and the line says so)."""
    record = folders.read_experiment(exp_dir) or {}
    if not record.get("ray_config"):
        return "study module not recorded"
    if "module_sha256" in record:
        path = Path(record["ray_config"])
        now = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        changed = "" if now == record["module_sha256"] else " (the file differs now)" if now else " (the file is gone)"
        return f"study {shown(path)} sha256 {record['module_sha256']}{changed}"
    try:
        path = config_path(record["ray_config"])
    except UserError:
        return f"Ray config {record['ray_config']} (its file is gone)"
    return f"Ray config {shown(path)} sha256 {hashlib.sha256(path.read_bytes()).hexdigest()} (hashed now)"


def trial_commits(stage_dir: Path) -> str:
    """The commits the stage's trials ran at (trial.json), shortened: 'trials at 7996507' ('not recorded')."""
    commits = []
    for trial_dir in folders.trial_dirs(stage_dir):
        path = trial_dir / "trial.json"
        commit = json.loads(path.read_text()).get("git_commit") if path.is_file() else None
        commits.append(commit[:7] + "-dirty" * commit.endswith("-dirty") if commit else "not recorded")
    return "trials at " + (", ".join(sorted(set(commits))) or "no commit")


def provenance(exp_dir: Path, stage: str, table, metric: str, argv: list[str]) -> dict[str, str]:
    """What drew the table and figures, as PNG metadata keys; `Description` holds it all in one line."""
    command = shlex.join(["python", "misc/utility_figure.py", *argv])
    facts = {"Commit": git_describe(), "Trials": trial_commits(exp_dir / stage), "Study": study_module(exp_dir),
             "Selection": vis.selection_labels(table["valid_labels"]), "Creation Time": date.today().isoformat()}
    facts["Description"] = (f"Drawn by `{command}` at commit {facts['Commit']} on {facts['Creation Time']} from "
                            f"stage '{stage}' ({facts['Trials']}); {facts['Study']}; {facts['Selection']}; "
                            f"{metric}, 95% t-intervals over seeds.")
    return facts


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
        exp_dir = vis.experiment_dir(args.exp_id)
        frame = vis.load_experiment(exp_dir)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    stages = sorted(set(frame["stage"]) - {""}) if "stage" in frame else []
    trials = frame[frame["stage"] == args.stage] if args.stage in stages else frame.iloc[:0]
    if trials.empty:
        print(f"error: experiment '{args.exp_id}' has no stage '{args.stage}' (stages: {', '.join(stages) or 'none'}):"
              " name one with --stage", file=sys.stderr)
        return 2
    metric = args.metric or vis.TEST_METRIC
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            table = vis.summary(trials, metric=args.metric)
        except ValueError as err:  # e.g. no scratch trials to compare with, or no test_at_best
            for warning in {str(w.message) for w in caught}:  # they say why trials were left out
                print(f"warning: {warning}", file=sys.stderr)
            print(f"error: stage '{args.stage}' of '{args.exp_id}': {first_line(err)}", file=sys.stderr)
            return 2
        facts = provenance(exp_dir, args.stage, table, metric, argv)
        if args.output:
            output = Path(args.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            for name, plot in (("utility", vis.utility_plot), ("accuracy", vis.accuracy_plot)):
                figure = plot(trials, metric=args.metric)
                figure.savefig(f"{output}_{name}.png", dpi=120,
                               metadata={**facts, "Title": f"{args.exp_id}, stage {args.stage}: {name}"})
    for warning in {str(w.message) for w in caught}:
        print(f"warning: {warning}", file=sys.stderr)
    print(facts["Description"] + "\n")
    print(markdown(table, metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
