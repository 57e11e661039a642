"""``spfmilter report``: a preview of SPF rejection, read from verdict logs.

The package owns the report command: reading the one verdict
line spfmilter logs per transaction, from files, standard input or the
journal's export, and telling an administrator what rejecting would
refuse before it is turned on.  It depends on the log format only, never
on the daemon's code.  ``main(argv)`` is what ``spfmilter report`` calls.
"""

from spfmilter.report.command import main

__all__ = ["main"]
