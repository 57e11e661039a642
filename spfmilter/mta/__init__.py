"""The MTA side: the milter protocol, and the check command beside it.

This layer owns the translation between an MTA and a Session: libmilter's
callbacks and their one error boundary, and the check command, which drives
a Session the same way without an MTA.
"""
