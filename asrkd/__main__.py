import sys

from asrkd.cli import main

sys.exit(main())
