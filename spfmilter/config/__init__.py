"""Configuration: every key declared once, read into a frozen Config.

This layer owns what an administrator can set and how it is written: the
declarations (default, parser, renderer and documentation of each key), the
kinds of value, reading a file with errors that name its file, line and key,
and the texts generated from the declarations (the example file, the
reference table, the man page's key list).  Every other layer reads a
Config; nothing here knows how a setting is used.
"""
