"""spfmilter: an SPF (RFC 7208) enforcing milter for Postfix and Sendmail.

This module owns the version number only; importing the package has no side
effects.
"""

__version__ = "0.1.0"
