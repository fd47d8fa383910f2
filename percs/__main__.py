import sys

from percs.cli import main

sys.exit(main())
