"""Online fine-tuning (ODT): a Decision Transformer whose weights stay frozen under an adapter
keeps training on its own rollouts with a stochastic policy (Zheng, Zhang & Grover, *Online
Decision Transformer*, ICML 2022): `policy` holds the Gaussian head, the distributions, the
learned temperature and ODT's losses; `buffer` the replay buffer of whole trajectories and the
dataset of what was collected."""

# an online run's collected episodes, one .npz each (what a resume reloads): named here, where
# `eva-rl export` reads it without loading torch
EPISODE_STORE = "episodes"
