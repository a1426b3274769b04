"""Time the nftables step of the kill switch by itself, inside a lab host.

Run with the host's own Python (the one the module runs with) inside the host's
namespaces, e.g. nsenter -t PID -n -m -u -- /usr/bin/python3 apply_probe.py
COLLECTIONS POLICY.json REPEAT. It imports the collection's module_utils from
COLLECTIONS (a directory holding ansible_collections/vpnguard/killswitch),
renders POLICY (the module's policy options as JSON), and times, REPEAT times:

    render    Policy -> nft text (parse_policy + render)
    check     the kernel's dry run of the whole transaction (Nft.check)
    apply     the one atomic transaction (Nft.apply), over the table left by
              the previous round: the kernel deletes it and adds the new one
    fresh     the same transaction with no table in place
    list      nft list table, which the module does after each apply

Prints one JSON object: lists of seconds per step, the ruleset's size and
the number of set elements. Leaves the table of the last apply in place.
"""

import json
import sys
import time


def main():
    collections, policy_path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, collections)
    import nftables
    from ansible_collections.vpnguard.killswitch.plugins.module_utils.policy import parse_policy
    from ansible_collections.vpnguard.killswitch.plugins.module_utils import nft as nftmod

    with open(policy_path) as f:
        raw = json.load(f)
    nft = nftmod.Nft(nftables)
    times = {'render': [], 'check': [], 'apply': [], 'fresh': [], 'list': []}
    ruleset = None
    for _ in range(repeat):
        t = time.perf_counter()
        ruleset = nftmod.render(parse_policy(raw))
        times['render'].append(time.perf_counter() - t)
        transaction = nftmod.replace_transaction(ruleset)

        t = time.perf_counter()
        nft.check(transaction)
        times['check'].append(time.perf_counter() - t)

        nft.apply(transaction)  # so that the timed apply below replaces a table of the same size
        t = time.perf_counter()
        nft.apply(transaction)
        times['apply'].append(time.perf_counter() - t)

        nft.apply(nftmod.replace_transaction(None))
        t = time.perf_counter()
        nft.apply(transaction)
        times['fresh'].append(time.perf_counter() - t)

        t = time.perf_counter()
        listing = nft.list_table()
        times['list'].append(time.perf_counter() - t)
    print(json.dumps({
        'seconds': times,
        'ruleset_bytes': len(ruleset),
        'listing_bytes': len(listing or ''),
        'set_elements': sum(len(raw.get(k) or []) for k in ('doh_servers', 'dns_servers', 'endpoints')),
    }))


if __name__ == '__main__':
    main()
