"""
Drive the real node process from a test: lifecycle and parameter services, frames, counts.

The node runs as its own process (as ``ros2 run`` / launch start it); this process talks to
it only through DDS: ``~/change_state``, ``~/set_parameters``, camera topics, the
``<camera>/detections`` answers, ``~/status`` and ``/diagnostics``.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
import os
import subprocess
import time
from typing import Callable, Dict, Iterator, List, Optional

from anytime_infer.demo import frame_message, load_samples, node_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = '/anytime_infer'
CAMERAS = ['/test/front/image_raw', '/test/rear/image_raw']
REMAPS = ['-r', 'camera_front/image_raw:=' + CAMERAS[0],
          '-r', 'camera_rear/image_raw:=' + CAMERAS[1]]
TRANSITIONS = {'configure': 1, 'cleanup': 2, 'activate': 3, 'deactivate': 4}
TARGET = {'configure': 'inactive', 'cleanup': 'unconfigured', 'activate': 'active',
          'deactivate': 'inactive'}
# A service request is sent again after this long without a response: a server can be
# discovered (service_is_ready) before it has matched the client's response reader, and a
# response sent before that is lost (seen on a loaded machine).
RETRY_S = 3.0


def start_node(extra=(), params_file: Optional[str] = None) -> subprocess.Popen:
    """Start the node process with the shipped parameters file, two remapped cameras."""
    params = params_file or os.path.join(REPO, 'config', 'anytime_infer.yaml')
    cmd = node_command(params, ['-p', 'qos_reliability:=reliable', '-p', 'qos_depth:=100',
                                *extra] + REMAPS)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stop_node(proc: subprocess.Popen) -> str:
    """SIGTERM the node, return its log; fail when it does not exit 0 (or by SIGTERM)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode in (0, -15), f'node exited {proc.returncode}:\n{out[-3000:]}'
    return out


@dataclass
class Peer:
    """A test-side rclpy node with clients of the node's services and its outputs."""

    node: object
    answers: Dict[tuple, object] = field(default_factory=dict)   # (camera, stamp ns) -> msg
    duplicates: int = 0
    status: List[object] = field(default_factory=list)
    diagnostics: List[object] = field(default_factory=list)
    images: List[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import GetParameters, SetParameters
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from anytime_infer.msg import DetectionArray, SchedulerStatus
        n = self.node
        self.reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.set_cli = n.create_client(SetParameters, NODE + '/set_parameters')
        self.get_cli = n.create_client(GetParameters, NODE + '/get_parameters')
        self.change_cli = n.create_client(ChangeState, NODE + '/change_state')
        self.state_cli = n.create_client(GetState, NODE + '/get_state')
        self.pubs = [n.create_publisher(Image, t, QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE)) for t in CAMERAS]
        for c, t in enumerate(CAMERAS):
            n.create_subscription(DetectionArray, t[:-len('/image_raw')] + '/detections',
                                  lambda m, c=c: self._answer(c, m), self.reliable)
        n.create_subscription(Image, CAMERAS[0][:-len('/image_raw')] + '/detections/image',
                              self.images.append, 10)
        n.create_subscription(SchedulerStatus, NODE + '/status', self.status.append,
                              self.reliable)
        n.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append,
                              self.reliable)
        self.samples = load_samples('fashion_mnist')
        self._frames: Dict[int, object] = {}

    def _answer(self, camera: int, msg) -> None:
        key = (camera, msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        if key in self.answers:
            self.duplicates += 1
        self.answers[key] = msg

    def spin(self, seconds: float) -> None:
        """Spin for a while."""
        self.spin_until(lambda: False, seconds)

    def spin_until(self, pred: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Spin until ``pred()`` holds or the timeout passes; return ``pred()``."""
        import rclpy
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.02)
        return bool(pred())

    def call(self, client, request, timeout: float = 20.0):
        """Call a service and wait for its response (the request sent again every RETRY_S)."""
        return call(self.node, client, request, timeout)

    def set_param(self, name: str, value):
        """Set one parameter through the node's SetParameters service; (ok, reason)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        req = SetParameters.Request(parameters=[Parameter(name, value=value)
                                                .to_parameter_msg()])
        res = self.call(self.set_cli, req).results[0]
        return res.successful, res.reason

    def get(self, name: str):
        """Read one parameter through the node's GetParameters service."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        res = self.call(self.get_cli, GetParameters.Request(names=[name]))
        return parameter_value_to_python(res.values[0])

    def transition(self, name: str) -> bool:
        """Request a lifecycle transition through ``~/change_state``; True once in it."""
        from lifecycle_msgs.srv import ChangeState
        req = ChangeState.Request()
        req.transition.id = TRANSITIONS[name]
        # A request sent again (its response lost) is refused once the first took the node
        # there: the state decides.
        return self.call(self.change_cli, req, timeout=60.0).success or \
            self.state() == TARGET[name]

    def state(self) -> str:
        """Return the node's lifecycle state label."""
        from lifecycle_msgs.srv import GetState
        return self.call(self.state_cli, GetState.Request()).current_state.label

    def wait_active(self, timeout: float = 60.0) -> None:
        """Wait until the node is active and subscribed to both cameras."""
        assert self.spin_until(lambda: self.state_cli.service_is_ready(), timeout)
        assert self.spin_until(lambda: self.state() == 'active' and all(
            p.get_subscription_count() for p in self.pubs), timeout), 'node not active'

    def frame(self, camera: int = 0, index: int = 0, stamp_ns: Optional[int] = None,
              size: int = 56, **fields):
        """Build (cached) a camera frame with a fresh stamp; ``fields`` override the Image."""
        key = (camera, index, size)
        msg = self._frames.get(key)
        if msg is None:
            img = self.samples['images'][index % len(self.samples['images'])]
            msg = self._frames[key] = frame_message(img, 0, f'cam{camera}', size)
        if fields:
            from sensor_msgs.msg import Image
            msg = Image(header=msg.header, height=msg.height, width=msg.width,
                        encoding=msg.encoding, step=msg.step, data=msg.data)
            for k, v in fields.items():
                setattr(msg, k, v)
        stamp = self.node.get_clock().now().nanoseconds if stamp_ns is None else stamp_ns
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return msg, stamp

    def send(self, camera: int = 0, timeout: float = 10.0, **kw):
        """Publish one frame and wait for its answer; return the DetectionArray or None."""
        msg, stamp = self.frame(camera, **kw)
        self.pubs[camera].publish(msg)
        key = (camera, stamp)
        self.spin_until(lambda: key in self.answers, timeout)
        return self.answers.get(key)

    def last_status(self, newer_than_ns: int = 0, timeout: float = 10.0):
        """Wait for a status message stamped after ``newer_than_ns``; return it (or None)."""
        def fresh():
            return self.status and _ns(self.status[-1].header.stamp) > newer_than_ns
        self.spin_until(fresh, timeout)
        return self.status[-1] if fresh() else None

    def endpoints(self, topic: str, kind: str, node_name: str = 'anytime_infer') -> int:
        """Count the named node's publishers ('pub') or subscriptions ('sub') on a topic."""
        info = (self.node.get_publishers_info_by_topic if kind == 'pub'
                else self.node.get_subscriptions_info_by_topic)(topic)
        return sum(1 for i in info if i.node_name == node_name)


def spin_until(node, pred: Callable[[], bool], timeout: float) -> bool:
    """Spin a node until ``pred()`` holds or the timeout passes; return ``pred()``."""
    import rclpy
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
    return bool(pred())


def call(node, client, request, timeout: float = 20.0):
    """Call a service and wait for its response (the request sent again every RETRY_S)."""
    end = time.monotonic() + timeout
    assert spin_until(node, lambda: client.service_is_ready(), timeout), \
        f'service {client.srv_name} not available'
    while True:
        future = client.call_async(request)
        if spin_until(node, future.done, min(RETRY_S, max(end - time.monotonic(), 0.1))):
            return future.result()
        client.remove_pending_request(future)
        assert time.monotonic() < end, f'{client.srv_name}: no response'


def set_parameters(node, target: str, **values) -> None:
    """Set parameters of the node ``target`` through its SetParameters service; all must pass."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    cli = node.create_client(SetParameters, target + '/set_parameters')
    try:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                for k, v in values.items()])
        for res in call(node, cli, req).results:
            assert res.successful, res.reason
    finally:
        node.destroy_client(cli)


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def thread_count(pid: int) -> int:
    """Threads of a process (``/proc/<pid>/task``)."""
    return len(os.listdir(f'/proc/{pid}/task'))


def thread_names(pid: int) -> List[str]:
    """Names of a process's threads, sorted (``/proc/<pid>/task/*/comm``)."""
    names = []
    for tid in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{tid}/comm') as f:
                names.append(f.read().strip())
        except OSError:     # the thread ended meanwhile
            pass
    return sorted(names)


def diag_status(arr, name: str):
    """Return the DiagnosticStatus called ``name`` in a DiagnosticArray (or None)."""
    return next((s for s in arr.status if s.name == name), None)


def kv(status) -> Dict[str, str]:
    """Return the values of a DiagnosticStatus as a dict."""
    return {v.key: v.value for v in status.values}


@contextmanager
def node_peer(tester: str, extra=()) -> Iterator['Peer']:
    """Start the node process with ``extra`` arguments and a tester node; stop both after."""
    import rclpy
    rclpy.init()
    node = rclpy.create_node(tester)
    proc = start_node(list(extra))
    p = Peer(node)
    p.proc = proc
    try:
        p.wait_active()
        yield p
    finally:
        if proc.returncode is None:
            print(stop_node(proc)[-3000:])
        node.destroy_node()
        rclpy.shutdown()


def malformed_image(good, **fields):
    """Return a copy of the sensor_msgs/Image ``good`` with ``fields`` set to bad values."""
    from sensor_msgs.msg import Image
    m = Image(height=good.height, width=good.width, encoding=good.encoding, step=good.step)
    m.data = good.data
    for k, v in fields.items():
        setattr(m, k, v)
    return m
