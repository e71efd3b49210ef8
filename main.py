"""selfstudy's command line: run a sweep of gin-configured trials with Ray Tune (see selfstudy/cli.py)."""

import sys

from selfstudy.cli import main

if __name__ == "__main__":
    sys.exit(main())
