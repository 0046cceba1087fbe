"""cnn-sentinel: EuroSAT land-use classification of Sentinel-2 scenes."""
