"""The audit report's arithmetic and wording, from recorded module results."""

from ansible_collections.vpnguard.killswitch.plugins.filter.audit_report import audit_markdown, audit_report


def result(refused_out=0, exception=0, leaked=False, after=None):
    counters = {'refused_out_v4': {'packets': refused_out, 'bytes': 0, 'counts': 'outbound IPv4 refused outside the tunnel'},
                'exception_uid_998': {'packets': exception, 'bytes': 0, 'counts': 'exception uid: 998 used'}}
    checks = [{'check': 'udp ipv4 bound to eth0', 'verdict': 'LEAKED' if leaked else 'refused'},
              {'check': 'udp ipv6 bound to eth0', 'verdict': 'not run'}]
    return {'counters': counters,
            'probe': {'leaked': leaked, 'checks': checks,
                      'counters_after': after or {'refused_out_v4': refused_out + 6, 'exception_uid_998': exception}},
            'tunnel': {'up': True, 'interfaces': []}, 'routes_outside_tunnel': []}


def test_hosts_are_told_apart_and_a_leak_is_not_compliant():
    report = audit_report({
        'ok': {'drift': [], 'result': result()},
        'drifted': {'drift': ['nftables table differs'], 'result': result()},
        'leaky': {'drift': [], 'result': result(leaked=True)},
        'refused': {'drift': None, 'error': 'endpoints[0].port: 53'},
        'gone': {'drift': None},
        'mac': {'drift': [], 'result': {}}})
    s = report['summary']
    assert s['compliant'] == ['mac', 'ok'] and s['leaked'] == ['leaky'] and s['not_audited'] == ['gone', 'refused']
    assert report['hosts']['leaky']['drift'] == ['LEAKED: udp ipv4 bound to eth0']
    assert report['hosts']['gone'] == {'compliant': False, 'unreachable': True, 'drift': ['unreachable']}
    assert report['hosts']['mac']['probe']['not_run'] == 'the probe did not run (killswitch_audit_probe is off)'
    assert 'counters_after' not in report['hosts']['ok']['probe']


def test_counters_count_from_the_previous_audit_after_its_probe_and_restart_after_a_reset():
    first = audit_report({'h': {'drift': [], 'result': result(refused_out=10, exception=2)}})
    assert first['hosts']['h']['counters']['refused_out_v4']['packets'] == 10
    assert first['hosts']['h']['counters_since'] == 'the kill switch was loaded'
    # The first audit's probe was refused 6 times (10 -> 16); 20 now is 4 real attempts since.
    second = audit_report({'h': {'drift': [], 'result': result(refused_out=20, exception=2)}}, first)
    assert second['hosts']['h']['counters']['refused_out_v4'] == {
        'packets': 4, 'total': 20, 'counts': 'outbound IPv4 refused outside the tunnel'}
    assert second['hosts']['h']['counters']['exception_uid_998']['packets'] == 0
    assert second['summary']['refused_attempts'] == 4 and second['summary']['exceptions_used'] == {}
    # A reboot reset the counters: what they hold now is all since.
    rebooted = audit_report({'h': {'drift': [], 'result': result(refused_out=3, exception=1)}}, second)
    assert rebooted['hosts']['h']['counters']['refused_out_v4']['packets'] == 3
    assert rebooted['summary']['exceptions_used'] == {'exception uid: 998 used': ['h']}


def test_the_markdown_answers_the_fleet_question_first():
    report = audit_report({'a': {'drift': [], 'result': result(refused_out=5, exception=1)},
                           'b': {'drift': [], 'result': result(leaked=True)},
                           'c': {'drift': None}})
    md = audit_markdown(report)
    head = md.split('\n\n')[1].splitlines()
    assert head == ['1 of 3 hosts compliant.',
                    '**The live probe got traffic out of 1 host(s): b.**',
                    "1 host(s) refused 5 attempt(s) to leave outside the tunnel (or to reach a resolver that is not "
                    "the tunnel's) since the previous audit.",
                    'The exception uid: 998 used on 1 host(s): a.',
                    'Not audited: c.']
    assert '| b | no | LEAKED (0 refused, 1 not run) | 0 | up |  | LEAKED: udp ipv4 bound to eth0 |' in md
    assert '| c | no | not run |  |  |  | unreachable |' in md


def windows_result(refused=0, leaked=False, after=None):
    """win_wfp_killswitch's evidence: counters from net events (bytes null), checks with the filter that refused."""
    counters = {'refused_out_v4': {'packets': refused, 'bytes': None, 'counts': 'outbound IPv4 refused outside the tunnel'},
                'exception_program_0cd9c065f6d4': {'packets': 1, 'bytes': None,
                                                   'counts': 'exception program: C:\\Tools\\backup.exe used'}}
    checks = [{'check': 'udp ipv4 bound to Ethernet', 'interface': 'Ethernet', 'family': 'ipv4', 'protocol': 'udp',
               'source': '198.18.1.10', 'verdict': 'LEAKED' if leaked else 'refused',
               'detail': 'sent from 198.18.1.10 (Ethernet) and no filter dropped it' if leaked else
               'refused by the firewall (WSAEACCES) at vpnguard-killswitch-block-all-out-v4'}]
    return {'counters': counters, 'drift': [],
            'probe': {'leaked': leaked, 'checks': checks,
                      'counters_after': after or {'refused_out_v4': refused + 3, 'exception_program_0cd9c065f6d4': 1}},
            'tunnel': {'up': True, 'interfaces': [{'interface': 'wg0', 'state': 'Up', 'addresses': ['192.0.2.11']}]},
            'routes_outside_tunnel': ['0.0.0.0/0 via 198.18.1.1 dev Ethernet metric 0']}


def test_issue15_a_windows_host_reports_the_same_evidence_and_its_leak_makes_it_not_compliant():
    first = audit_report({'win': {'drift': [], 'result': windows_result(refused=5)},
                          'win-leaky': {'drift': [], 'result': windows_result(leaked=True)}})
    assert first['hosts']['win']['compliant'] and not first['hosts']['win-leaky']['compliant']
    assert first['hosts']['win-leaky']['drift'] == ['LEAKED: udp ipv4 bound to Ethernet']
    assert first['summary']['leaked'] == ['win-leaky']
    assert first['summary']['exceptions_used'] == {'exception program: C:\\Tools\\backup.exe used': ['win', 'win-leaky']}
    assert first['hosts']['win']['routes_outside_tunnel'] == ['0.0.0.0/0 via 198.18.1.1 dev Ethernet metric 0']
    # The next audit counts from the ledger's totals after the previous probe (its own 3 refusals are no attempt).
    second = audit_report({'win': {'drift': [], 'result': windows_result(refused=10)}}, first)
    assert second['hosts']['win']['counters']['refused_out_v4'] == {
        'packets': 2, 'total': 10, 'counts': 'outbound IPv4 refused outside the tunnel'}
    assert '| win | yes | refused (1 refused, 0 not run) | 2 | up |' in audit_markdown(second)
