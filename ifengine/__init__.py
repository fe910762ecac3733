"""ifengine: a lean inference engine for the DeepFloyd IF text-to-image cascade."""

from .pipeline.cascade import Cascade, CascadeOutput
from .stage.options import RequestError

__all__ = ["Cascade", "CascadeOutput", "RequestError", "__version__"]
__version__ = "0.1.0"
