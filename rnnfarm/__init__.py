"""rnnfarm: distributed batch training of char-rnn style language models on Ray."""

__version__ = "0.1.0"
