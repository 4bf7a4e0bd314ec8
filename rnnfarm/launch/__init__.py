"""Launching runs: a run's pipeline on an embedded or joined Ray (build, train, rank, promote, report), the Tune
sweep, submitting to a remote Ray cluster as a Ray Job, and the progress display of a run started here.

It may import every stage below it (``corpus``, ``engine``, ``runs``, ``insight``) and the shared top level.
"""
