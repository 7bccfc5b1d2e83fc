"""Offline data: building Minari datasets (`build`, `record`); finding and summarising them
(`catalog`); whether their numbers can be trained on (`checks`)."""
