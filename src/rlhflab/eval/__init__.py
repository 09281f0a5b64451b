"""Evaluation: statistics of scores and models (AUROC of an uncertainty signal, ...).

`stats.py` imports only torch.
"""
