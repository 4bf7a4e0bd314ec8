"""Using a trained model: exporting it (ONNX, a web page that writes text in the browser) and serving it (Ray Serve).

This package may import the engine modules (model, checkpoint, sample, pull, vocab) and storage; nothing
outside it imports it, so training never depends on export or serving code.
"""
