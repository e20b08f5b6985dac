"""Speed benchmark: joryu KD vs a plain loop, the student alone and torchdistill (see joryu/bench.py).

    python benchmarks/speed.py [--quick] [--threads N]      # the same as `joryu bench`
"""

import sys

from joryu.bench import main

if __name__ == "__main__":
    sys.exit(main())
