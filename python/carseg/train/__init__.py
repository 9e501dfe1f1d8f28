"""carseg.train: the Catalyst side. Configs (config), the run (run), and what a config's
`_target_`s name: the runner, callbacks, engines, model, data set, transforms, losses and
schedules. Catalyst and its dependencies are imported here and nowhere else in carseg."""
