"""One module per training stage, each with a single public `run` entry."""
