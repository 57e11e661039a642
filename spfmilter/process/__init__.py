"""The running process: start-up, privileges, workers, logs and signals.

This layer owns what a daemon needs around the milter: the order of
start-up, the drop from root, worker processes on one socket, log handlers,
the metrics listener, the service manager's socket and readiness, reloads
and a stop that lets the work in progress finish.
"""
