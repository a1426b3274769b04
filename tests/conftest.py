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
