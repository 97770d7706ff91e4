"""The server's view of the one inference path in :mod:`mmfuse.model.predictor` (``mmfuse.serve.predictor`` is
where the server and earlier code import it from)."""

from mmfuse.model.prediction import Prediction, grid_shape
from mmfuse.model.predictor import Predictor, TorchPredictor

__all__ = ["Prediction", "Predictor", "TorchPredictor", "grid_shape"]
