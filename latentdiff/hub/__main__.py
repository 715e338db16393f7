"""`python -m latentdiff.hub MODEL_DIR --repo-id USER/NAME [--dry-run]`: the same as `latentdiff push`."""

import sys

from latentdiff.hub.push import main

sys.exit(main())
