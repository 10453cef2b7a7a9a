"""``python -m sparo_clip.quickstart``: the main job (tiny SPARO vs its CLIP twin, over seeds).

The code lives in :mod:`sparo_clip.commands.quickstart`; this module keeps the public ``-m`` name.
"""

import sys

from sparo_clip.commands.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
