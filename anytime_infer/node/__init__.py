"""
The ROS 2 node: camera topics in, anytime detections out.

``main()`` runs it until SIGINT or SIGTERM, then stops cleanly: it takes no more frames,
answers every received frame (finished, or dropped as ``shutdown``) while its publishers
are still valid, publishes a last status, waits (bounded) for reliable subscribers to
acknowledge, and exits 0 at once (no interpreter teardown: nothing is in flight).
rclpy's own signal handlers are not installed: they shut the context down first (every
later publish fails: "publisher's context is invalid") and a second Ctrl-C (the
terminal's, then launch's) raised ``KeyboardInterrupt`` anywhere, e.g. inside
``Executor.stop()``.
"""
import signal
import sys
import time
from typing import List, Optional

# Spin in slices this long: a Python signal handler runs only between bytecodes, so this
# bounds the time from a signal to the start of the shutdown.
SPIN_SLICE_S = 0.1
# Longest wait, all publishers together, for reliable subscribers to acknowledge the last
# answers and status. Fast DDS sends the samples within publish() and readers acknowledge
# them at the writer's next heartbeat (seconds apart), so the wait seldom ends early: it
# only gives a reader that reported a gap a moment for the retransmission. Measured: the
# subscribers of test_signals.py had every answer when the wait ended, at 0.2 s as at 1 s.
ACK_TIMEOUT_S = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A signal handler that only records the first stop signal; ``main()`` acts on it."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def __call__(self, signum: int, frame) -> None:
        """Record the signal; a second one (Ctrl-C twice, launch) changes nothing."""
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether a stop signal has arrived."""
        return self.signum is not None


def install_stop_handlers(stop: StopRequest) -> bool:
    """
    Route SIGINT and SIGTERM to ``stop``; False where not possible (not the main thread).

    Also where a signal was inherited as ignored (a background job of a script, a test run
    under ``nohup``), as rclpy's own handlers do: whoever sends the node SIGINT (launch, a
    supervisor, a test) means it to stop.
    """
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)
    except ValueError:
        return False
    return True


def ignore_stop_signals(own_handlers: bool) -> None:
    """
    Ignore further SIGINT / SIGTERM once stopped (only where main() installed handlers).

    Python's finalization resets signals that have a Python handler to their default: a
    second Ctrl-C (or launch's SIGINT) arriving while the interpreter tears down would kill
    the process (exit -2).
    """
    if own_handlers:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def lifecycle_state(node) -> str:
    """Label of a LifecycleNode's current state ('active', 'inactive', ...)."""
    # rclpy's LifecycleNode has no public getter; trigger_shutdown() reads the same field.
    return node._state_machine.current_state[1]


def stop_node(node, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
    """
    Stop a running node so that every frame it received is answered, then destroy it.

    Deactivation destroys the camera subscriptions and stops the executor, which emits
    every outcome through the node's callback (published while the context is valid) and
    then a last status. Shutdown moves the lifecycle to ``finalized``.
    """
    from rclpy.duration import Duration
    if lifecycle_state(node) == 'active':
        node.trigger_deactivate()
        st = node.status()
        node.get_logger().info(
            f'stopped: {st.frames_received} frames received, each answered: '
            f'{st.frames_on_time} on time, {st.frames_late} late, {st.frames_dropped} dropped')
    if lifecycle_state(node) in ('unconfigured', 'inactive', 'active'):
        node.trigger_shutdown()
    end = time.monotonic() + ack_timeout_s
    for pub in list(node.publishers):
        left = end - time.monotonic()
        if left <= 0:
            break
        pub.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
    node.destroy_node()


def end_process(code: int) -> None:
    """
    Leave the DDS graph and exit now, skipping the interpreter's teardown.

    Called only after a complete stop: every received frame answered, the last status
    published, the bounded acknowledgement wait over, the node destroyed and the context
    shut down (its log flushed); no frame is in flight. The teardown skipped is Python
    unloading torch and its extensions: 0.6 s idle, over 1 s on a busy machine here,
    most of the time from the signal to the exit.
    """
    import logging
    import os
    import rclpy
    rclpy.get_default_context().destroy()   # the participant leaves the graph at once
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(args: Optional[List[str]] = None) -> int:
    """Run the anytime_infer node until SIGINT, SIGTERM or shutdown; 0 on a clean stop."""
    from anytime_infer.ros_env import isolate_venv_from_sourced_ros
    isolate_venv_from_sourced_ros()   # may re-execute this process: before anything else
    stop = StopRequest()
    own_handlers = install_stop_handlers(stop)   # before the slow imports and model load
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from anytime_infer.node.anytime_infer_node import AnytimeInferNode

    if stop.requested:      # stopped while importing (seconds): no node, nothing received
        ignore_stop_signals(own_handlers)
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO if own_handlers
               else None)
    node = executor = None
    code = 0
    stopped = False     # stop_node() ran: every received frame answered
    try:
        node = AnytimeInferNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
        if stop.requested:
            node.get_logger().info(f'{signal.Signals(stop.signum).name}: stopping (every '
                                   'received frame is answered first)')
    except ExternalShutdownException:
        pass
    except (RuntimeError, ValueError) as e:
        print(f'anytime_infer_node: {e}', file=sys.stderr)
        code = 1
    finally:
        if node is not None and rclpy.ok():
            stop_node(node)
            stopped = True
        if executor is not None:
            executor.shutdown(timeout_sec=0)   # its guard conditions hold the context
        rclpy.try_shutdown()
        ignore_stop_signals(own_handlers)
    if own_handlers and stopped and code == 0:
        end_process(code)
    return code
