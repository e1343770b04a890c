"""Fault-injection tests: crashes, restarts and outages of the real processes and services."""
