"""The final report's notes on trials whose numbers say little."""

from __future__ import annotations

import pandas as pd

from selfstudy.report import loss_notes


def history(trial: str, valid: list[float], train: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"trial": trial, "epoch": range(1, len(valid) + 1), "valid_loss": valid, "train_loss": train})


def test_a_validation_loss_that_explodes_while_training_improves_gets_a_note() -> None:
    frame = pd.concat([
        history("exploded", [2.3, 1.9, 40.0, 11786.0], [2.3, 1.5, 0.4, 0.05]),
        history("steady", [2.3, 1.2, 0.9, 0.8], [2.3, 1.0, 0.5, 0.2]),
        history("both_worse", [2.0, 30.0, 50.0, 60.0], [2.0, 3.0, 5.0, 9.0]),  # diverging, not overfitting
    ], ignore_index=True)
    notes = loss_notes(frame)
    assert list(notes) == ["exploded"]
    cell, line = notes["exploded"]
    assert cell == "valid_loss x6203"
    assert line.startswith("valid_loss rose to 11786.0000 at epoch 4 from 1.9000 at epoch 2 while train_loss fell "
                           "to 0.0500")
    assert loss_notes(frame.drop(columns="valid_loss")) == {}  # no validation split, nothing to say
