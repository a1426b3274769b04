"""Swap the kill switch ruleset N times between two policies, inside a lab host.

    swap.py atomic N    the module's own way: one nft transaction per swap
    swap.py naive N     delete the table, then load the new one: two transactions

Runs with the host's python3 (python3-nftables), on the collection's renderer.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, '.cache', 'collections'))

import nftables  # noqa: E402

from ansible_collections.vpnguard.killswitch.plugins.module_utils import nft  # noqa: E402
from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy  # noqa: E402

LAB_POLICY = {
    'tunnel_interfaces': ['wg*'],
    'endpoints': [{'address': '203.0.113.1', 'port': 51820, 'protocol': 'udp'}],
    'dns_servers': ['192.0.2.1'],
}


def main(mode, count):
    rulesets = [nft.render(parse_policy(dict(LAB_POLICY, allow_lan=lan))) for lan in (True, False)]
    live = nft.Nft(nftables)
    for i in range(count):
        ruleset = rulesets[i % 2]
        if mode == 'atomic':
            live.apply(nft.replace_transaction(ruleset))
        else:
            subprocess.run(['nft', 'delete', 'table'] + nft.TABLE.split(), check=False)
            subprocess.run(['nft', '-f', '-'], input=ruleset, text=True, check=True)
    print('%d %s swaps' % (count, mode))


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]))
