"""
The imprecise-computation scheduler: tasks, utility, policies, simulator (numpy only).

Nothing here imports torch or rclpy: the scheduler can be read, tested and benchmarked
alone, and the executor (torch) and the node (ROS) ask it what to do.
"""
from anytime_infer.scheduler.policies import make_policy, POLICY_NAMES
from anytime_infer.scheduler.task import Decision, Task

__all__ = ['Decision', 'make_policy', 'POLICY_NAMES', 'Task']
