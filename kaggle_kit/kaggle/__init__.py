"""Kaggle: kernel folders and their metadata, the official client's actions, the offline wheels dataset.

`metadata`, `wheels` and `secrets` are pure Python; `client` imports the `kaggle` package on first use.
"""
