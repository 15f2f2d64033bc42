"""Tasks (one per frame or region) and the decisions a policy returns."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

# Drop reasons (also the strings published in DetectionArray.reason).
BAD_INPUT = 'bad_input'
INFEASIBLE = 'infeasible'
QUEUE_FULL = 'queue_full'
ERROR = 'error'
SHUTDOWN = 'shutdown'
DROP_REASONS = (BAD_INPUT, INFEASIBLE, QUEUE_FULL, ERROR, SHUTDOWN)


@dataclass
class Task:
    """
    One unit of work: a frame (or a region of it) with a deadline.

    Times are seconds on one clock (simulated, or the node's ROS clock).
    """

    task_id: int
    stream: int                   # camera index (per-stream weight and bookkeeping)
    arrival: float                # when the frame arrived
    deadline: float               # absolute deadline
    num_stages: int
    weight: float = 1.0           # stream weight: reward = weight * expected accuracy
    stamp: float = 0.0            # the image header stamp (for policies that want it)
    stages_done: int = 0
    confidences: List[float] = field(default_factory=list)   # calibrated, per exit run
    # Simulation only (the oracle): whether each exit is correct for this input.
    exit_correct: Optional[List[bool]] = None

    @property
    def last_confidence(self) -> Optional[float]:
        """Confidence of the deepest exit run so far (None before stage 1)."""
        return self.confidences[-1] if self.confidences else None

    @property
    def complete(self) -> bool:
        """All stages have run."""
        return self.stages_done >= self.num_stages


class Decision:
    """
    What a policy wants now.

    ``run``: ids of tasks whose next stage runs now, together as one batch (all at the same
    stage), or empty to idle until the next event. ``finish``: tasks to publish now at
    their current depth. ``drop``: (task id, reason) pairs. ``planned_depth``: the depth
    the plan assigns each pending task (for status and the published expected accuracy).
    A plain class with slots: one is made at every stage boundary (a dataclass with
    default factories costs about a microsecond more there).
    """

    __slots__ = ('run', 'finish', 'drop', 'planned_depth')

    def __init__(self, run: Optional[List[int]] = None, finish: Optional[List[int]] = None,
                 drop: Optional[List[Tuple[int, str]]] = None,
                 planned_depth: Optional[dict] = None) -> None:
        self.run: List[int] = [] if run is None else run
        self.finish: List[int] = [] if finish is None else finish
        self.drop: List[Tuple[int, str]] = [] if drop is None else drop
        self.planned_depth: dict = {} if planned_depth is None else planned_depth

    def __repr__(self) -> str:
        return (f'Decision(run={self.run}, finish={self.finish}, drop={self.drop}, '
                f'planned_depth={self.planned_depth})')
