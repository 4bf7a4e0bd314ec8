"""Using a trained model: export and serving.

It may import every stage below it (``launch`` for an embedded Ray, ``insight`` for a run's checkpoint,
``engine``, ``corpus``) and the shared top level; only the CLI imports it, so training never pulls in a
web framework.
"""
