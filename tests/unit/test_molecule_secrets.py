"""The Windows scenario's password never reaches the output, however verbose."""

import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
CANARY = 'canary-Pa55word-7f3e'


def test_the_windows_target_play_does_not_print_the_password_at_vvv(tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.cache', 'collections'),
               VPNGUARD_WINDOWS_HOST='198.51.100.7', VPNGUARD_WINDOWS_VARS=str(tmp_path / 'vars.yml'),
               VPNGUARD_WINDOWS_PASSWORD=CANARY, ANSIBLE_NOCOLOR='1')
    # Only the play on localhost runs: it adds the host, it does not reach it.
    run = subprocess.run([PLAYBOOK, '-i', 'localhost,', '-c', 'local', '-vvv',
                          os.path.join(REPO, 'molecule', 'windows', 'target.yml')],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert 'Target it' in run.stdout
    assert CANARY not in run.stdout + run.stderr
