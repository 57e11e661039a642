"""SPF evaluation: carrying out a plan, with pyspf and the DNS it reads.

This layer owns everything that talks to DNS or runs check_host() (RFC 7208
section 4): the evaluator that carries out a plan within the deadline of
one MTA command (the skip facts about the client, then HELO and MAIL FROM,
side by side in a thread pool), the pyspf adapter with its limits and kept
results, the stub resolver with its TTL cache and wire codec, and the
warm-up run before the daemon drops root.
"""
