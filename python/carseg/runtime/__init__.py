"""carseg.runtime: running an exported artifact folder. The manifest reader and its checks
(manifest), the preprocessing contract in torch ops (preprocess), the Python reference
predictor (reference), and one way to open any backend, C++ or Python (predictor).
Imports carseg.io and carseg.errors; never the exporter."""
