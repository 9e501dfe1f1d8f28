"""carseg.io: pixels and files. Decoding photos and masks (images), encoding masks and cutouts
with the one compositing rule (encode), writing files so that no half-written one is ever seen
(files), and what a run names its outputs (names). Imports only carseg.errors."""
