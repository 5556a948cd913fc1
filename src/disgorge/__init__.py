"""disgorge: trace, audit, unlearn and verify what a trained model learned from which data."""

from .api import ForgetResult, erase, forget, ingest_file, ingest_scenario, train, verify, verify_strong
from .direct import unlearn
from .errors import DisgorgeError
from .evidence.certificate import Thresholds
from .methods import METHODS, Method, MethodConfig, UnlearnRequest, get_method
from .spec import Recipe
from .workspace import Workspace

__version__ = "0.1.0"

__all__ = ["METHODS", "DisgorgeError", "ForgetResult", "Method", "MethodConfig", "Recipe", "Thresholds",
           "UnlearnRequest", "Workspace", "__version__", "erase", "forget", "get_method", "ingest_file",
           "ingest_scenario", "train", "unlearn", "verify", "verify_strong"]
