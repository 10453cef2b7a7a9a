"""``python -m sparo_clip.train`` (and ``torchrun -m sparo_clip.train``): the training entry point.

The code lives in :mod:`sparo_clip.training.entry`; this module keeps the public ``-m`` name.
"""

import sys

from sparo_clip.training.entry import main

if __name__ == "__main__":
    sys.exit(main())
