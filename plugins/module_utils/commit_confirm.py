# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Commit-confirmed: the host undoes a new policy by itself unless the controller confirms it.

Before a new policy is applied, a rollback script that restores the previous
one is written and a timer process, in a session of its own so that it
outlives the module and the connection, runs it after the timeout. The
controller confirms over a fresh connection, which proves it can still reach
the host, and that stops the timer.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import subprocess
import time

ROLLBACK_SCRIPT = 'confirm-rollback.sh'
TIMER_PID = 'confirm-timer.pid'


def _paths(state_dir):
    return os.path.join(state_dir, ROLLBACK_SCRIPT), os.path.join(state_dir, TIMER_PID)


def _timer_pid(state_dir):
    """The PID of our pending timer, or None; a PID reused by another process is not ours."""
    script, pid_file = _paths(state_dir)
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            cmdline = f.read().split(b'\0')
    except (IOError, OSError, ValueError):
        return None
    return pid if script.encode() in cmdline else None


def pending(state_dir):
    return _timer_pid(state_dir) is not None


def arm(state_dir, rollback_script, timeout):
    """Start the timer. A pending one keeps its script: it restores the last confirmed state."""
    script, pid_file = _paths(state_dir)
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, 0o700)
    if pending(state_dir):
        _stop(state_dir)
    else:
        with open(script, 'w') as f:
            f.write(rollback_script)
        os.chmod(script, 0o700)
    # A timer that outlives the module, in a session of its own: run_command waits for what it runs.
    timer = subprocess.Popen(  # pylint: disable=ansible-bad-function
        ['sh', '-c', 'sleep "$1" && sh "$2"; rm -f "$3"', 'vpnguard-confirm', str(timeout), script, pid_file],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        close_fds=True, start_new_session=True)
    with open(pid_file, 'w') as f:
        f.write('%d\n' % timer.pid)
    # Until the child has exec'd, its cmdline is still ours and pending() would
    # deny the timer, so the role would skip the confirmation and the host would
    # undo a good policy. Seen on a loaded machine.
    deadline = time.time() + 10
    while not pending(state_dir) and timer.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    return timer.pid


def _stop(state_dir):
    pid = _timer_pid(state_dir)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)  # the timer and its sleep
    except OSError:
        return False
    return True


def disarm(state_dir):
    """Stop the pending timer and forget the rollback. Returns whether one was pending."""
    stopped = _stop(state_dir)
    for path in _paths(state_dir):
        if os.path.exists(path):
            os.remove(path)
    return stopped
