"""Running things: the CLI, dataset summaries, and (in later issues) training, evaluation,
ensembles and the paper checker."""
