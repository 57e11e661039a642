"""``python -m spfmilter``: delegates to :func:`spfmilter.cli.main`."""

import sys

from spfmilter.cli import main

sys.exit(main())
