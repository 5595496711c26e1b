"""smartbrush: the SmartBrush inpainting corpus builder, trainer and evaluator."""

__version__ = "0.2.0"
