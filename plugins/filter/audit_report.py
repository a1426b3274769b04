# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: audit_report
short_description: Build the fleet's kill switch audit report from what each host returned
version_added: "0.1.0"
description:
  - Turns what the audit learnt of each host (drift, the live probe, the firewall's counters, the tunnel and
    the default routes outside it) into one report with fleet totals, the counters counted since the previous
    report where one is given.
  - A host is compliant when it has no drift and its probe found no leak.
author:
  - vpnguard maintainers (@vpnguard)
options:
  _input:
    description:
      - Per host, a dict with C(drift) (list, absent when the host was not audited), C(error) (why the audit
        failed, if it did) and C(result) (the kill switch module's result, with C(probe), C(counters),
        C(tunnel) and C(routes_outside_tunnel) where the host's OS has them).
    type: dict
    required: true
  previous:
    description: The previous report (as this filter returned it), to count from; empty counts from when each
      host's kill switch was loaded.
    type: dict
    default: {}
'''

EXAMPLES = r'''
- name: Build the report
  ansible.builtin.set_fact:
    report: "{{ per_host | vpnguard.killswitch.audit_report(previous_report) }}"
'''

RETURN = r'''
_value:
  description: C({"summary" - {...}, "hosts" - {NAME - {compliant, drift, probe, counters, tunnel, routes_outside_tunnel}}}).
  type: dict
'''


def _counters(now, before):
    """{name: {packets, total, counts}}: packets since before (the previous audit's, after its own probe)
    where the host's counters went on counting, else since they started (a reboot or a removal resets them)."""
    counted = {}
    for name, value in sorted((now or {}).items()):
        total = value.get('packets', 0)
        earlier = (before or {}).get(name)
        since = total - earlier if earlier is not None and earlier <= total else total
        counted[name] = dict(packets=since, total=total, counts=value.get('counts', ''))
    return counted


def _host(name, data, previous_hosts):
    result = data.get('result') or {}
    drift = data.get('drift')
    if drift is None:
        unreachable = not data.get('error')
        return dict(compliant=False, unreachable=unreachable,
                    drift=['unreachable'] if unreachable else ['audit failed: ' + data['error']],
                    **({} if unreachable else dict(error=data['error'])))
    probe = result.get('probe')
    host = dict(drift=list(drift))
    if probe is None:
        host['probe'] = dict(leaked=False, checks=[], not_run='the probe did not run (killswitch_audit_probe is off)')
    else:
        host['probe'] = dict((k, v) for k, v in probe.items() if k != 'counters_after')
        leaked = [c['check'] for c in probe.get('checks', []) if c.get('verdict') == 'LEAKED']
        host['drift'] += ['LEAKED: ' + check for check in leaked]
    # The baseline is the previous audit's counters after its probe, whose own refusals are no attempt.
    baseline = (previous_hosts.get(name) or {}).get('counters_after_probe')
    host['counters'] = _counters(result.get('counters'), baseline)
    host['counters_since'] = 'the previous audit' if baseline is not None else 'the kill switch was loaded'
    if probe is not None and 'counters_after' in probe:
        host['counters_after_probe'] = probe['counters_after']
    for key in ('tunnel', 'routes_outside_tunnel'):
        if key in result:
            host[key] = result[key]
    host['compliant'] = not host['drift']
    return host


def audit_report(per_host, previous=None):
    previous_hosts = (previous or {}).get('hosts') or {}
    hosts = dict((name, _host(name, data or {}, previous_hosts)) for name, data in sorted(per_host.items()))
    refused, exceptions = {}, {}
    for name, host in hosts.items():
        for counter, value in host.get('counters', {}).items():
            if counter.startswith('refused_') and value['packets']:
                refused[name] = refused.get(name, 0) + value['packets']
            if counter.startswith('exception_') and value['packets']:
                exceptions.setdefault(value['counts'] or counter, []).append(name)
    summary = dict(
        hosts=len(hosts),
        compliant=sorted(n for n, h in hosts.items() if h['compliant']),
        not_compliant=sorted(n for n, h in hosts.items() if not h['compliant']),
        not_audited=sorted(n for n, h in hosts.items() if h.get('unreachable') or 'error' in h),
        leaked=sorted(n for n, h in hosts.items() if h.get('probe', {}).get('leaked')),
        refused_attempts=sum(refused.values()),
        hosts_that_refused=sorted(refused),
        exceptions_used=dict((what, sorted(names)) for what, names in sorted(exceptions.items())),
    )
    return dict(summary=summary, hosts=hosts)


def _cell(text):
    return str(text).replace('\n', ' ').replace('|', '\\|')


def audit_markdown(report):
    """The report as Markdown: the fleet's answer first, then a row per host."""
    s = report['summary']
    lines = ['# Kill switch audit', '',
             '%d of %d hosts compliant.' % (len(s['compliant']), s['hosts'])]
    if s['leaked']:
        lines.append('**The live probe got traffic out of %d host(s): %s.**' % (len(s['leaked']), ', '.join(s['leaked'])))
    else:
        lines.append('The live probe got nothing out of any host it ran on.')
    lines.append('%d host(s) refused %d attempt(s) to leave outside the tunnel (or to reach a resolver that is not '
                 'the tunnel\'s) since the previous audit.' % (len(s['hosts_that_refused']), s['refused_attempts']))
    for what, names in s['exceptions_used'].items():
        lines.append('The %s on %d host(s): %s.' % (what, len(names), ', '.join(names)))
    if s['not_audited']:
        lines.append('Not audited: %s.' % ', '.join(s['not_audited']))
    lines += ['', '| Host | Compliant | Probe | Refused since last audit | Tunnel | Default routes outside the tunnel | Drift |',
              '| --- | --- | --- | ---: | --- | --- | --- |']
    for name, h in sorted(report['hosts'].items()):
        probe = h.get('probe') or {}
        checks = probe.get('checks', [])
        if h.get('unreachable') or 'error' in h:
            probe_cell = 'not run'
        elif probe.get('not_run'):
            probe_cell = 'not run: ' + probe['not_run']
        else:
            probe_cell = '%s (%d refused, %d not run)' % (
                'LEAKED' if probe.get('leaked') else 'refused',
                sum(1 for c in checks if c['verdict'] == 'refused'),
                sum(1 for c in checks if c['verdict'] == 'not run'))
        refused = sum(v['packets'] for k, v in h.get('counters', {}).items() if k.startswith('refused_'))
        tunnel = h.get('tunnel')
        lines.append('| %s |' % ' | '.join(_cell(c) for c in (
            name, 'yes' if h['compliant'] else 'no', probe_cell, refused if 'counters' in h else '',
            ('up' if tunnel['up'] else 'down') if tunnel else '',
            '<br>'.join(h.get('routes_outside_tunnel', [])), '<br>'.join(h['drift']))))
    return '\n'.join(lines) + '\n'


class FilterModule(object):
    def filters(self):
        return {'audit_report': audit_report, 'audit_markdown': audit_markdown}
