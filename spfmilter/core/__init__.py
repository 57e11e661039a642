"""The core: what spfmilter decides for one SMTP session, as plain values.

This layer owns the vocabulary (SPF results, identities, plans, outcomes,
decisions), the policy (a plan of what to evaluate, then a decision from
the outcomes), the Session that keeps one connection's SMTP state, the text
of result headers and replies, the verdict line and the counters.  It knows
neither libmilter nor pyspf: the SPF and DNS work is asked of the evaluator
a Session is given.
"""
