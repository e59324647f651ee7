from .bert import *  # noqa: F403
from .bert import __all__  # noqa: F401
