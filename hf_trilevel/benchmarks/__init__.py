"""Measured speedups of TriLevel settings against dense transformers ViT, each beside its FLOPs limit.

`inference` and `training` back `hf-trilevel bench inference|train`; `timing` holds the interleaved-rounds timer and
the peak-memory probes they share; `report` the table, JSON and environment output.
"""
