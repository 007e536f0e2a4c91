"""Ray glue: a search is a Ray Tune Tuner with OptunaSearch and ASHA (search.py); a one-worker
trial runs the engine inside its Tune trial, a multi-worker trial is a Ray Train TorchTrainer
inside it (trial.py). Import the submodules: this package itself does not import Ray, so the
resource rules (resources.py) can be checked before Ray starts."""
