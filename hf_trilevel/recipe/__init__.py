"""The image-classification recipe behind `examples/run_image_classification.py`, one module per step.

`arguments` (the model, data and run flags), `parsing` (every group in one parser, flags or a JSON file, the tuned
defaults), `checks` (across groups, before any data loads), `data`, `model` (config, model and image processor),
`results` (metrics beside the Trainer's), `outputs` (files beside the Trainer's), `reporting` (what the user reads)
and `processes` (launch and teardown). Each technique's flags live in its own folder (`*/arguments.py`).
"""
