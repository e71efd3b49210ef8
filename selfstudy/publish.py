"""A completed stage's snapshots under their names: `<stage>/<snapshot name>/snapshot`, the layout
of `misc/move_snapshots.py`, which later stages of a study start from (see `selfstudy.study`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from selfstudy import folders
from selfstudy.config import config_columns
from selfstudy.errors import UserError


def _short(value: Any) -> str:
    text = str(value).rstrip("/").rsplit("/", 1)[-1] if isinstance(value, str) else str(value)
    return re.sub(r"[^\w.+-]", "_", text)


def snapshot_names(stage: str, snapshot_name: str | None, configs: list[dict[str, Any]]) -> list[str]:
    """The folder each trial's snapshot of stage `stage` moves to, inside the stage's folder: `snapshot_name`
    (a format over `cfg`) or the values that differ between the trials; distinct, or a `UserError`."""
    columns = [config_columns(config) for config in configs]
    keys = [key for key in columns[0] if len({repr(c.get(key)) for c in columns}) > 1] if columns else []
    names = []
    for column in columns:
        if snapshot_name:
            try:
                name = snapshot_name.format(cfg=column)
            except (KeyError, ValueError, IndexError, AttributeError) as err:
                raise UserError(f"stage '{stage}': snapshot_name {snapshot_name!r} does not fit its trials "
                                f"({type(err).__name__}: {err}); keys: {', '.join(sorted(column))}") from None
        else:
            name = "-".join(_short(column.get(key)) for key in keys) or stage
        if not folders.is_folder_name(name):
            raise UserError(f"stage '{stage}': snapshot_name {snapshot_name!r} gives {name!r}, not a folder "
                            "name of letters, digits and . _ + -: choose a format that gives one, e.g. 'rotate-{cfg[seed]}'")
        if name in names:
            raise UserError(f"stage '{stage}': two trials would publish their snapshot as {name!r}: set the "
                            "stage's snapshot_name to a format that tells them apart, e.g. 'rotate-{cfg[seed]}'")
        names.append(name)
    return names


def publish(stage: str, snapshot_name: str | None, stage_dir: Path) -> None:
    """Move the final snapshot of every trial of a completed stage to its name (done once per
    trial: a rerun after a crash moves only what is left)."""
    trial_dirs = folders.trial_dirs(stage_dir)
    names = snapshot_names(stage, snapshot_name, [folders.read_params(trial_dir) for trial_dir in trial_dirs])
    moved = folders.moved_snapshots(stage_dir)
    for trial_dir, name in zip(trial_dirs, names):
        if trial_dir.name in moved:
            continue
        source = folders.latest_snapshot(trial_dir)
        if source is None:
            raise UserError(f"stage '{stage}': trial {trial_dir.name} left no checkpoint for later stages: "
                            "set checkpoint_at_end = True in the stage")
        folders.move_snapshot(source, stage_dir / name)


def published(exp_id: str, stage_dir: Path) -> list[str]:
    """`Wrapper.pretrained` values of the snapshots a completed stage published, sorted."""
    return sorted(f"{exp_id}/{place.relative_to(stage_dir.parent)}" for place in
                  folders.moved_snapshots(stage_dir).values())
