"""One trial of the gin config given with -g (or the default), checkpointed at the end."""

search_space = {}  # gin binding name -> value or ray.tune search space
checkpoint_frequency = 0  # epochs between checkpoints; 0 = only at the end
checkpoint_at_end = True
