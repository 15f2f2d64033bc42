"""anytime_infer: anytime multi-exit inference for ROS 2 under a real-time scheduler."""
# The generated messages (anytime_infer.msg) live in another copy of this package, in the
# environment's site-packages; extend_path lets one import see both.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = '0.1.0'
