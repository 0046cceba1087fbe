"""Scenes: reading them block by block, predicting, clouds, and writing the outputs."""
