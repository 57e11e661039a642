"""SPF evaluation, and the DKIM and ARC checks of the rescue, with the DNS they read.

This layer owns everything that talks to DNS or runs check_host() (RFC 7208
section 4): the evaluator that carries out a plan within the deadline of
one MTA command (the skip facts about the client, then HELO and MAIL FROM,
side by side in a thread pool), the pyspf adapter with its limits and kept
results, the stub resolver with its TTL cache and wire codec, and the
warm-up run before the daemon drops root.  For the opt-in rescue of
forwarded mail it also verifies DKIM signatures (RFC 6376) and ARC chains
(RFC 8617) at end of message, through the same resolver and within the same
kinds of bounds.
"""
