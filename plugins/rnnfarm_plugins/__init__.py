"""rnnfarm's first-party corpus plugins, registered through the ``rnnfarm`` entry-point group."""
