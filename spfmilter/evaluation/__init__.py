"""Evaluation of a transaction's authentication: SPF, and DKIM and ARC for the rescue."""
