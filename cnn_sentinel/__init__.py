"""cnn-sentinel's helper modules: datasets, networks, training, reports and scenes."""
