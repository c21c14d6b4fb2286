"""Foundations every stage may use: errors, atomic writes, run-folder files, device and threads, the run lock."""
