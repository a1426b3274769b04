"""Stands in for the get-pip script ansible-test downloads from a host this machine cannot reach.

ansible-test runs it in an empty virtual environment with get-pip's
arguments: pip options, pip==VERSION and friends, and --no-setuptools /
--no-wheel. The interpreter's bundled pip (ensurepip) needs no network;
pip then installs the asked-for versions from the package index.
"""

import subprocess
import sys

GET_PIP_ONLY = ('--no-setuptools', '--no-wheel')

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + [a for a in sys.argv[1:] if a not in GET_PIP_ONLY])
if '--no-setuptools' in sys.argv:
    subprocess.call([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q', 'setuptools'])
