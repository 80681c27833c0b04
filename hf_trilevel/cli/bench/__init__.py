"""Measured speedups of TriLevel settings against dense transformers ViT, each beside its FLOPs limit.

`inference` and `training` back `hf-trilevel bench inference|train`; `measure` holds the one dense-vs-TriLevel
measurement loop they share; `timing` the interleaved-rounds timer and the peak-memory probes; `token_budget` the
kept-token counts of a batch and the adaptive mass calibrated to a fixed-rate budget; `options` the model shape and
the device it runs on, `settings` the operating points (one row each) and `slimmed_shapes` the slimmed widths, all
checked from the arguments; `report` the table, JSON and environment output.
"""
