"""carseg.datasets: data sets in Carvana's layout. Drawing a synthetic one offline (synth) and
pairing photos with masks into the train/valid CSVs that training reads (prepare)."""
