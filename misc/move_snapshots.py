"""Move each trial's latest snapshot to a readable place, for `Wrapper.pretrained`.

    python misc/move_snapshots.py -e cifar_test_0000            # dry run: prints source -> target
    python misc/move_snapshots.py -e pretrain-rotate -p '{cfg[SynDataset.dataset_choice]}' -m

For every finished trial of EXP_DIR/EXP, the `snapshot` of its newest `checkpoint_*` goes to
EXP_DIR/EXP/<FORMAT>/snapshot, as a hard link (or a copy), so the trial's own checkpoint
stays whole. FORMAT is a Python format string over `cfg`, the trial's config keyed by gin
binding name (the -p bindings too). Without -p, the target is EXP_DIR/EXP itself, which
suits an experiment of one trial. Every move is checked before the first one happens: two
trials with one target, a key the config lacks, a target outside EXP_DIR/EXP or one that
already holds a snapshot are refused, and nothing is moved. Trials still running,
interrupted or failed are skipped with a line each (--unfinished moves their newest
checkpoint too). Beside each moved snapshot, `snapshot.json` records where it came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfstudy import folders  # noqa: E402
from selfstudy.config import first_line  # noqa: E402
from selfstudy.durable import DiskFull  # noqa: E402
from selfstudy.errors import UserError  # noqa: E402
from selfstudy.folders import SNAPSHOT  # noqa: E402
from selfstudy.config import config_columns  # noqa: E402


def target_dir(exp_dir: Path, fmt: str, config: dict, trial: str) -> Path:
    columns = config_columns(config)
    try:
        relative = fmt.format(cfg=columns)
    except KeyError as err:
        raise UserError(f"-p {fmt!r}: trial {trial} has no config key {err}; keys: {', '.join(sorted(columns))}") \
            from None
    except (ValueError, IndexError, AttributeError) as err:
        raise UserError(f"-p {fmt!r} is not a valid format string ({err}); write e.g. '{{cfg[Name.param]}}'") \
            from None
    target = (exp_dir / relative).resolve()
    if not target.is_relative_to(exp_dir.resolve()):
        raise UserError(f"-p {fmt!r} puts trial {trial}'s snapshot at {target}, outside {exp_dir}: "
                        "choose a format that stays inside the experiment")
    return target


def plan_moves(exp_id: str, fmt: str, unfinished: bool = False) -> list[tuple[Path, Path]]:
    """(source snapshot, target directory) for every trial with a checkpoint; all checks done.
    Trials that have not finished (running, interrupted or failed) are skipped unless `unfinished`:
    their newest checkpoint is not their result."""
    exp_dir = folders.existing_exp_dir(exp_id)
    moves: list[tuple[Path, Path]] = []
    owners: dict[Path, str] = {}
    moved = folders.moved_snapshots(exp_dir)
    for trial_dir in folders.trial_dirs(exp_dir):
        source = folders.latest_snapshot(trial_dir)
        state = folders.trial_status(trial_dir).state
        if trial_dir.name in moved and source is not None and state in ("finished", "stopped") and \
                moved_from(moved[trial_dir.name]) != source.parent.name:  # moved before it finished: the result now
            print(f"Replacing {moved[trial_dir.name] / SNAPSHOT}: moved from {moved_from(moved[trial_dir.name])} "
                  f"before {trial_dir.name} finished")
            moves.append((source, moved[trial_dir.name]))
            owners[moved[trial_dir.name]] = trial_dir.name
            continue
        if trial_dir.name in moved or source is None or (state in ("running", "errored") and not unfinished):
            why = (f"its snapshot was already moved to {moved[trial_dir.name]}" if trial_dir.name in moved
                   else f"it has not finished ({state}), so its newest checkpoint is not its result; add --unfinished "
                        "to move it anyway" if state in ("running", "errored") and not unfinished
                   else "it has no checkpoint (run with -c to checkpoint at the end)")
            print(f"Skipping {trial_dir.name}: {why}")
            continue
        target = target_dir(exp_dir, fmt, folders.read_params(trial_dir), trial_dir.name)
        if target in owners:
            raise UserError(f"trials {owners[target]} and {trial_dir.name} would both move to {target}: give -p a "
                            f"format that tells them apart, e.g. '{{cfg[{telling_key(exp_dir, owners[target], trial_dir)}]}}'")
        if (target / SNAPSHOT).exists():
            raise UserError(f"{target / SNAPSHOT} already exists: remove it or choose another -p format")
        owners[target] = trial_dir.name
        moves.append((source, target))
    if not moves and moved:
        places = ", ".join(sorted({str(place) for place in moved.values()}))
        raise UserError(f"every snapshot of '{exp_id}' was already moved (to {places}): nothing left to move")
    if not moves and any(folders.trial_status(t).state in ("running", "errored") for t in folders.trial_dirs(exp_dir)):
        raise UserError(f"no trial of '{exp_id}' has finished with a checkpoint: wait for the run to end (see "
                        f"`python main.py -e {exp_id} --status`), or add --unfinished to move the newest checkpoints")
    if not moves:
        raise UserError(f"no trial of '{exp_id}' has a checkpoint to move: run it with -c to checkpoint at the end")
    return moves


def telling_key(exp_dir: Path, first: str, trial_dir: Path) -> str:
    """A config key whose value differs between trial `first` and `trial_dir` (for the example)."""
    a, b = (config_columns(folders.read_params(d)) for d in (exp_dir / first, trial_dir))
    return next((key for key in a if repr(a.get(key)) != repr(b.get(key))), "seed")


def moved_from(place: Path) -> str | None:
    """The checkpoint folder the snapshot at `place` was moved from (its snapshot.json)."""
    try:
        return json.loads((place / f"{SNAPSHOT}.json").read_text()).get("checkpoint")
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp_id", required=True, help="experiment whose trials' snapshots move")
    parser.add_argument("-p", "--format", default="", help="target folder inside the experiment, e.g. "
                                                           "'{cfg[SynDataset.dataset_choice]}'")
    parser.add_argument("-m", "--move", action="store_true", help="move; without it, only print the plan")
    parser.add_argument("--unfinished", action="store_true",
                        help="also move the newest checkpoint of trials that have not finished (running or failed)")
    args = parser.parse_args(argv)
    try:
        moves = plan_moves(args.exp_id, args.format, args.unfinished)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    for source, target in moves:
        print(f"Moving from: {source.parent} to: {target}")
        if args.move:
            try:
                if (target / SNAPSHOT).exists():  # a replacement: its record must not outlive a failed link
                    (target / SNAPSHOT).unlink()
                folders.move_snapshot(source, target)
            except (DiskFull, FileNotFoundError) as err:  # a full disk; a running trial deleted its checkpoint
                why = err.strerror if isinstance(err, DiskFull) else f"{source} is gone (its trial runs and replaced it)"
                print(f"error: {why}; the moves above this line are done", file=sys.stderr)
                return 1
    if not args.move:
        print("Dry run: nothing moved; add -m to move.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
