"""Kernel tests in a network stack of their own: a shell script run under `unshare --net` with a ruleset.

The scripts build their veths and namespaces themselves; every process they
start lives in the private stack and goes with it.
"""

import os
import shutil
import subprocess

import pytest

from ansible_collections.vpnguard.killswitch.plugins.module_utils.nft import replace_transaction

TRAFFIC = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, 'lab', 'traffic.py'))


def skip_without_kernel(*tools):
    """Skip unless root with nft, unshare and tools, to ask the kernel."""
    needed = ('nft', 'unshare') + tools
    return pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in needed),
                              reason='needs root, %s to ask the kernel' % ', '.join(needed))


def run_script(tmp_path, script, ruleset, *args):
    """script's output, run by sh in a network stack of its own with $1 the ruleset's transaction file ('' when
    ruleset is None: no kill switch), $2 traffic.py and args after them."""
    path = ''
    if ruleset is not None:
        path = str(tmp_path / 'ruleset.nft')
        with open(path, 'w') as f:
            f.write(replace_transaction(ruleset))
    result = subprocess.run(['unshare', '--net', 'sh', '-c', script, 'host', path, TRAFFIC] + list(args),
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout
