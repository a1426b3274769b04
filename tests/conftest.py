"""Make the checkout importable as ansible_collections.vpnguard.killswitch."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, '.cache', 'collections')
LINK = os.path.join(COLLECTIONS, 'ansible_collections', 'vpnguard', 'killswitch')

if not os.path.islink(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink(REPO, LINK)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

try:
    from hypothesis import settings
except ImportError:  # the property tests then fail to import, loudly
    pass
else:
    # CI runs the same examples every time, so that a red run can be replayed;
    # developers' runs keep exploring.
    settings.register_profile('ci', derandomize=True, deadline=None)
    if os.environ.get('CI'):
        settings.load_profile('ci')
