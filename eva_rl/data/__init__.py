"""Offline data: building Minari datasets (`build`); finding and summarising them (`catalog`)."""
