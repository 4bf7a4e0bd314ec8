"""Looking inside trained models and putting their figures in context: sampling views, reports, and baselines
such as the n-gram models every bits/char is read beside. This package may import the engine, corpus and storage
modules; none of them imports it.
"""
