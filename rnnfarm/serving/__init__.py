"""Using a trained model: export and serving.

This package may import the engine modules (model, checkpoint, vocab, sample) and storage; nothing
outside it imports it, so training never pulls in a web framework.
"""
