"""
`anytime-infer demo` as a new user runs it: every frame it sends comes back answered.

The demo sends best-effort frames (as cameras do) to a node it has just started. A
writer sees the node's reader before the node's reader has matched the writer, and
best-effort frames sent in between are lost: on a busy machine the demo reported
"frames sent 1200, outcomes 1198 (missing 2)". The camera player now primes each camera
until one frame has come back before it plays (``camera_player.play(prime=True)``).
"""
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_answers_every_frame_it_sends():
    exe = os.path.join(os.path.dirname(sys.executable), 'anytime-infer')
    # Ten frames in the first 0.1 s per camera: where the first frames would be lost.
    p = subprocess.run([exe, 'demo', '--seconds', '2', '--rate', '100', '--deadline-ms', '200'],
                       capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    sent = re.search(r'frames sent (\d+), outcomes (\d+) \(missing (\d+)\)', out)
    assert sent, out[-3000:]
    assert int(sent.group(1)) == 400, out[-3000:]
    assert int(sent.group(3)) == 0 and sent.group(1) == sent.group(2), out[-3000:]
    primed = re.search(r'before them (\d+) priming frames', out)
    assert primed and int(primed.group(1)) >= 2, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
