"""Using a trained model: exporting it (ONNX, a web page that writes text in the browser) and serving it (Ray Serve).

It may import every stage below it (``launch`` for an embedded Ray and a cluster's dashboard, ``runs`` for a
verified download, ``insight`` for a run's checkpoint, ``engine``, ``corpus``) and the shared top level; only
the CLI imports it, so training never pulls in a web framework.
"""
