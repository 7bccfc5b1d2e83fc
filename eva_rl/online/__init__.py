"""Online fine-tuning (ODT): the stochastic policy, the replay buffer of trajectories and the
run."""
