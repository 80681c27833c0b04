"""Measured speedups of TriLevel settings against dense transformers ViT, each beside its FLOPs limit.

`inference` and `training` back `hf-trilevel bench inference|train`; `measure` holds the one dense-vs-TriLevel
measurement loop they share; `timing` the interleaved-rounds timer and the peak-memory probes; `options` the checked
arguments; `report` the table, JSON and environment output.
"""
