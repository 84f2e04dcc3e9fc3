import sys

from medsam.cli import main

sys.exit(main())
