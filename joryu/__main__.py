import sys

from joryu.cli import main

sys.exit(main())
