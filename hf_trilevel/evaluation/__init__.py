"""What a model costs and how well it does: analytic FLOPs, measured token counts, metrics, and their formatting."""
