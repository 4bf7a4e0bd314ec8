"""Looking inside trained models and putting their figures in context: drawing samples, the neuron and
prediction views and their HTML pages, a run's report, and baselines such as the n-gram models every bits/char
is read beside.

It may import the shared top level, ``corpus``, ``engine`` and ``runs``; nothing above it.
"""
