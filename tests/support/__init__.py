"""Support code for the test-suite: fixtures that run real mail servers."""
