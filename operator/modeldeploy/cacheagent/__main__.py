"""`python -m modeldeploy.cacheagent`: run the node cache agent until SIGTERM."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
