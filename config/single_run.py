"""One trial of the gin config given with -g (or the default), checkpointed at the end."""

search_space = {}  # gin binding name -> value or ray.tune search space
checkpoint_at_end = True
checkpoint_frequency = 1  # epochs between checkpoints (the default): a crash loses at most one epoch
max_failures = 2  # retries of a failed trial, each from its last checkpoint (the default)
