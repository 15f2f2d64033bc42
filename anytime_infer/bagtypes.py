"""A rosbags typestore that knows the package's own messages (for reading and writing bags)."""
import os
from typing import Optional

from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.store import Typestore

MSG_NAMES = ('Detection', 'DetectionArray', 'SchedulerStatus')


def msg_dir() -> str:
    """Folder holding the package's .msg files, in the repo or in a ROS install."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(os.path.dirname(here), 'msg')]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(os.path.join(get_package_share_directory('anytime_infer'), 'msg'))
    except Exception:  # noqa: B902 - not installed as a ROS package: the repo copy serves
        pass
    for path in candidates:
        if os.path.isfile(os.path.join(path, 'DetectionArray.msg')):
            return path
    raise FileNotFoundError('anytime_infer message definitions (msg/*.msg) not found')


def project_typestore(store: Optional[Typestore] = None) -> Typestore:
    """Return a Kilted-era typestore with anytime_infer/msg/* registered."""
    store = store or get_typestore(Stores.ROS2_KILTED)
    folder = msg_dir()
    types = {}
    for name in MSG_NAMES:
        with open(os.path.join(folder, name + '.msg'), encoding='utf-8') as f:
            types.update(get_types_from_msg(f.read(), f'anytime_infer/msg/{name}'))
    store.register(types)
    return store
