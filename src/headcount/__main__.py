"""``python -m headcount``: the command line, also as torchrun's module
(``torchrun --nproc-per-node 2 -m headcount analyze ...``)."""

import sys

from headcount.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
