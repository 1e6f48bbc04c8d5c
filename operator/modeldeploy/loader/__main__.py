"""`python -m modeldeploy.loader`: the init container's entry point."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
