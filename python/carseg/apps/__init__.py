"""carseg.apps: what users run over an artifact folder. Background removal over folders
(cutout), HTTP serving on Ray Serve (serve), batch inference on Ray Data (batch), and a picture
of the model's masks (gallery). Apps use runtime, io and datasets; nothing imports an app but
the CLI."""
