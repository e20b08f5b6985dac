"""joryu (蒸留): distill a large teacher network into a small, fast student."""

from joryu.api import distill
from joryu.outputs import Outputs
from joryu.taps import Taps, taps

__version__ = "0.1.0"
__all__ = ["Outputs", "Taps", "distill", "taps", "__version__"]
