"""Importing this module registers every gin configurable of selfstudy."""

import gin.torch  # noqa: F401  (registers torch.optim classes for `@torch.optim.SGD` references)

import selfstudy.augment  # noqa: F401
import selfstudy.data  # noqa: F401
import selfstudy.knn  # noqa: F401  (knn.*, knn_grid.*)
import selfstudy.models  # noqa: F401
import selfstudy.optim  # noqa: F401
import selfstudy.probe  # noqa: F401  (probe_grid.*)
import selfstudy.tasks  # noqa: F401
import selfstudy.settings  # noqa: F401  (session.*)
