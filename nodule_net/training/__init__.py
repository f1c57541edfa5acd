"""Training the folds of an experiment: one fold's run, the engines that step it (one after another,
side by side, one process per fold), the plan that picks one, and the bench."""
