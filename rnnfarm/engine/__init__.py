"""The engine: the model, the token streams it reads, the per-worker training loop, checkpoints, and the
Ray Train wiring that runs the loop on workers.

It may import the shared top level (spec, storage, log, errors, redact) and ``corpus``; nothing above it.
"""
