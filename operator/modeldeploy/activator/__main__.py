"""`python -m modeldeploy.activator`: run the activator until SIGTERM."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
