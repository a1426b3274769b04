"""Stands in for the get-pip script ansible-test downloads from a host this machine cannot reach.

ansible-test runs it in an empty virtual environment with pip's own
arguments (options, then pip==VERSION and friends). The interpreter's
bundled pip (ensurepip) needs no network; pip then installs the asked-for
versions from the package index like any other package.
"""

import subprocess
import sys

subprocess.check_call([sys.executable, '-m', 'ensurepip', '--default-pip'], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + sys.argv[1:])
