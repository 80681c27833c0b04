"""The image-classification recipe behind `examples/run_image_classification.py`, one module per step.

`arguments` (the model, data and run flags), `parsing` (every group in one parser, flags or a JSON file, the tuned
defaults), `checks` (across groups, before any data loads), `data`, `model` (config, model and image processor),
`results` (metrics beside the Trainer's), `outputs` (files beside the Trainer's), `slimmed_folder` (also
`hf-trilevel slim`) and `processes` (launch and teardown). What the script prints stays in the script. Each
technique's flags live in its own folder (`*/arguments.py`).
"""
