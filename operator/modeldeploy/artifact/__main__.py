"""`python -m modeldeploy.artifact`: build, fetch or compute the key of a model artifact."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
