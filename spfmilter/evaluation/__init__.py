"""SPF evaluation: pyspf behind bounds, and the DNS it reads.

This layer owns everything that talks to DNS or runs check_host() (RFC 7208
section 4): the pyspf adapter with its limits and kept results, the stub
resolver with its TTL cache and wire codec, what every session shares of
them, and the warm-up run before the daemon drops root.
"""
