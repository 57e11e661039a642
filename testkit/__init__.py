"""The real parts the tests and the benchmarks run.

This package owns what both drive spfmilter with: the daemon started as a
subprocess on a real socket, the authoritative DNS test server and its
zones, the MTA's side of the milter protocol, a private Unbound, and the
loopback ports they listen on.  It is not part of the installed package;
pytest's fixtures stay with the tests.
"""
