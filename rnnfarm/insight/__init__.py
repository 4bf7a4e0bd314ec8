"""Looking inside a trained model: drawing samples, the neuron and attention views, their HTML pages, and a
run's report.

It may import the shared top level, ``corpus``, ``engine`` and ``runs``; nothing above it.
"""
