"""Training pieces: tracklets, sampling strategies, datasets, models, losses and embedding."""
