"""MeTaL's workflows beyond training many tasks at once: ensembles of runs and weak supervision with labeling
functions (slices and auxiliary label sets are task options, trained through objectives)."""
