"""The image-classification recipe behind `examples/run_image_classification.py`: its arguments and setup."""
