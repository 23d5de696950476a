"""`python -m chaos run …` (the same as `raftbroker chaos run …`)."""
import sys

from .cli import main

sys.exit(main())
