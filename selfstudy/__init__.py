"""selfstudy: measure how much self-supervised pretraining helps a downstream task."""

import os

# cuBLAS fixes its workspace when a process first uses it, and reproducible results need this
# setting then (`session.deterministic`); it is set here, on import, before anything of the
# package can touch CUDA, so that any trial of the process (a -l sweep, a reused Ray worker) may
# be deterministic. A setting from the environment wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
