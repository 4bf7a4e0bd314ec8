"""Runs on storage: a run's record (begin, end, promote, seal), its trials' leaderboard, the sample archives,
and pulling a run to a local folder.

It may import the shared top level, ``corpus`` and ``engine`` (checkpoint files); nothing above it.
"""
