"""The C# module_util compiles with Debian's mono-mcs as C# 5 (Windows PowerShell's compiler), and its host-side
decisions (tunnel binding, DNS rollback, read-back of LUIDs) run under mono with the expected results.

mcs has the P/Invoke surface, not the WFP runtime: the native calls are compiled, not run. Without mcs the tests
skip locally and fail in CI (CI=true), where scripts/bootstrap installs it.
"""

import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
UTIL = os.path.join(REPO, 'plugins', 'module_utils', 'WfpKillSwitch.cs')
PROBE = os.path.join(HERE, 'csharp', 'WfpKillSwitchProbe.cs')
NAMESPACE = 'ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch'


def _tool(name):
    path = shutil.which(name)
    if path is None:
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail('%s is missing in CI: scripts/bootstrap installs it (Debian mono-mcs)' % name)
        pytest.skip('%s is not installed here (Debian mono-mcs)' % name)
    return path


def _mcs(tmp_path, *sources, **kw):
    out = str(tmp_path / kw.get('out', 'out.dll'))
    target = kw.get('target', 'library')
    return subprocess.run([_tool('mcs'), '-langversion:5', '-warnaserror', '-target:' + target, '-out:' + out]
                          + list(sources), capture_output=True, text=True, check=False), out


def test_the_util_compiles_as_csharp_5_without_warnings(tmp_path):
    result = _mcs(tmp_path, UTIL)[0]
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_util_is_named_as_ansible_loads_collection_csharp_utils():
    with open(UTIL) as f:
        source = f.read()
    assert 'namespace %s\n' % NAMESPACE in source
    with open(os.path.join(REPO, 'plugins', 'modules', 'win_wfp_killswitch.ps1')) as f:
        assert '#AnsibleRequires -CSharpUtil ..module_utils.WfpKillSwitch\n' in f.read()


def test_the_compile_check_does_catch_broken_csharp(tmp_path):
    broken = tmp_path / 'Broken.cs'
    broken.write_text('namespace X { public class Y { public int Z() { return "a"; } } }\n')
    assert _mcs(tmp_path, str(broken))[0].returncode != 0
    newer = tmp_path / 'Newer.cs'
    newer.write_text('namespace X { public class Y { public string Z(int a) { return $"{a}"; } } }\n')
    assert _mcs(tmp_path, str(newer))[0].returncode != 0, 'C# 6 is refused, as Windows PowerShell refuses it'


@pytest.fixture(scope='module')
def probe(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('probe')
    result, exe = _mcs(tmp_path, UTIL, PROBE, target='exe', out='probe.exe')
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run([_tool('mono'), exe], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(line.split('=', 1) for line in run.stdout.splitlines())


def test_aliases_bind_to_luids_and_a_pattern_without_adapter_binds_to_none(probe):
    assert probe['bind_present'] == 'Wintun*:0;openvpn*:11;wg0:7', 'case-insensitive, "*" a prefix wildcard'
    assert probe['bind_never'] == 'wg0:0', 'LUID 0 matches no interface: an empty condition would match all'
    assert probe['bind_star_is_prefix_only'] == 'False,True'


def test_luids_are_read_however_they_were_boxed(probe):
    assert probe['bind_boxed'] == 'tap0:9;tun0:8;wg0:7;wg1:10'


def test_point4_a_tunnel_down_during_the_run_keeps_its_luid(probe):
    assert probe['bind_down'] == 'wg0:7'


def test_luids_read_back_turn_into_patterns_and_strangers_stay_visible(probe):
    assert probe['unbind'] == 'luid:9,wg0', 'a pattern only when all its LUIDs are there; tun* (8) is not'


def test_point6_dns_rollback_restores_dhcp_as_dhcp_by_guid_and_skips_missing_adapters(probe):
    assert probe['rollback'] == 'tun1:set:192.0.2.53 2001:db8::53;gone:skip:198.51.100.1;wg0:reset:'


def test_ipv6_read_back_is_written_as_python_writes_it(probe):
    import ipaddress
    assert probe['ipv6_text'] == str(ipaddress.ip_address('ff02::1:ff00:0'))


# The evidence: counters from net events, the live probe's verdicts, the tunnel, the routes, the audit policy.

EVIDENCE = os.path.join(HERE, 'csharp', 'WfpEvidenceProbe.cs')
RECORDED = os.path.join(HERE, 'csharp', 'recorded')


@pytest.fixture(scope='module')
def evidence(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('evidence')
    result, exe = _mcs(tmp_path, UTIL, EVIDENCE, target='exe', out='evidence.exe')
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run([_tool('mono'), exe, RECORDED], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return dict(line.split('=', 1) for line in run.stdout.splitlines())


def test_net_events_are_read_at_the_documented_offsets(evidence):
    assert evidence['event_drop_v4'] == (
        'family:ipv4,filter_id:70001,layer_id:48,local:198.18.1.10,local_port:50000,'
        'program:\\device\\harddiskvolume3\\tools\\probe.exe,protocol:17,remote:203.0.113.254,remote_port:9,'
        'time:2026-12-02T06:00:00.0000000Z,type:drop')
    assert evidence['event_drop_v6'].startswith('family:ipv6,filter_id:70011,layer_id:48,local:2001:db8:1:1::10,')
    assert 'remote:2001:db8:ffff::fe,' in evidence['event_drop_v6']
    assert evidence['event_allow'].endswith(',type:allow')
    assert evidence['event_ike_failure'] == 'null', 'only classify drops and allows are counted'


def test_counters_count_our_filters_events_by_the_renderers_rules_on_top_of_the_ledger(evidence):
    # 40 from the ledger + the probe's drop; the endpoint drop counts as refused_endpoint, not refused_out_v4;
    # DNS to the tunnel's resolver outside the tunnel vs to another resolver; another provider's drop and the
    # tunnel's allow count nothing.
    assert evidence['tally'] == ('refused_out_v4:41,refused_out_v6:1,refused_dns_outside:1,refused_dns_resolver:2,'
                                 'refused_endpoint:1,exception_program_0cd9c065f6d4:1')
    assert evidence['tally_keeps_only_the_policys_counters'] == 'False'


def test_the_probe_binds_to_every_global_address_of_every_non_tunnel_interface_and_says_why_it_skips(evidence):
    plan = [c.split('|') for c in evidence['plan'].split(';')]
    ran = [c[0] for c in plan if c[3] == 'run']
    assert ran == ['udp ipv4 bound to Ethernet', 'tcp ipv4 bound to Ethernet', 'dns ipv4 bound to Ethernet',
                   'udp ipv6 bound to Ethernet', 'tcp ipv6 bound to Ethernet', 'dns ipv6 bound to Ethernet',
                   "dns ipv4 to a resolver that is not the tunnel's", "dns ipv6 to a resolver that is not the tunnel's"]
    assert [c[1] for c in plan if c[0].endswith('bound to Ethernet')] == ['198.18.1.10'] * 3 + ['2001:db8:1:1::10'] * 3
    assert not [c for c in plan if 'wg0' in c[0] or 'Loopback' in c[0]], 'the tunnel and loopback are not probed'
    assert {c[4] for c in plan if 'Wi-Fi' in c[0]} == {'interface down'}
    assert {c[4] for c in plan if 'WSL' in c[0]} == {'no global ipv4 address', 'no global ipv6 address'}
    assert all(c[2].startswith(('203.0.113.254:', '2001:db8:ffff::fe:')) for c in plan), 'only the canaries'
    assert evidence['plan_any_resolver'] == 'not run|the policy lets DNS reach any resolver through the tunnel'


def test_a_check_is_refused_only_when_the_call_failed_or_a_filter_dropped_it(evidence):
    assert evidence['judge_eacces_with_event'] == ('refused|refused by the firewall (WSAEACCES) at '
                                                   'vpnguard-killswitch-block-all-out-v4')
    assert evidence['judge_eacces_without_event'] == 'refused|refused by the firewall (WSAEACCES)'
    assert evidence['judge_sent_but_dropped'].startswith('refused|the call went through but the firewall dropped it')
    assert evidence['judge_other_providers_drop'].endswith('at filter 999 of another provider')
    assert evidence['judge_no_route'] == 'refused|refused by routing (WSAENETUNREACH)'
    assert evidence['judge_bind_failed'].startswith('not run|could not bind to 198.18.1.10')


def test_a_send_that_went_through_with_no_drop_event_is_a_leak(evidence):
    assert evidence['judge_sent'] == 'LEAKED|sent from 198.18.1.10 (Ethernet) and no filter dropped it'
    assert evidence['judge_connect_in_progress'].startswith('LEAKED|connection attempt in progress')
    assert evidence['judge_allow_event_is_no_drop'].startswith('LEAKED|'), 'an allow event is no refusal'
    # The canary's RST, a timeout or a failed neighbour request: the SYN or the request left the host.
    assert evidence['judge_connection_refused'] == 'LEAKED|no filter refused it, and it left the host (Winsock error 10061)'
    assert evidence['judge_host_unreachable'].startswith('LEAKED|')


def test_a_call_that_failed_for_another_reason_proves_nothing_either_way(evidence):
    assert evidence['judge_other_error'] == 'not run|the call failed for another reason (Winsock error 10047)'


def test_tunnel_state_and_default_routes_outside_the_tunnel_from_recorded_get_netroute(evidence):
    assert evidence['tunnel'] == 'True|addresses:192.0.2.11,interface:wg0,state:Up'
    assert evidence['tunnel_down'] == 'False'
    assert evidence['routes_outside_tunnel'].split(';') == [
        '0.0.0.0/0 dev Wi-Fi metric 25', '0.0.0.0/0 via 198.18.1.1 dev Ethernet metric 0',
        '::/0 via 2001:db8:1:1::1 dev Ethernet metric 256']


DROP, CONNECTION = '{0CCE9225-69AE-11D9-BED3-505054503030}', '{0CCE9226-69AE-11D9-BED3-505054503030}'


def test_the_audit_policy_is_read_as_flags_at_audit_policy_informations_documented_offsets(evidence):
    # AUDIT_POLICY_INFORMATION: GUID, ULONG AuditingInformation, GUID (ntsecapi.h).
    assert evidence['audit_layout'] == '36,16,20'
    assert evidence['audit_read'] == '0|1', 'Packet Drop not audited, Connection POLICY_AUDIT_EVENT_SUCCESS'
    # The documentation's own words: an array of pointers to the structures, then the structures, in one buffer.
    assert evidence['audit_read_through_pointers'] == '2|3'
    assert evidence['audit_read_other_layout'].startswith('refused|'), \
        'an answer that does not name the subcategory asked for is not read as a setting'


def test_reading_the_audit_policy_depends_on_no_text_in_the_hosts_display_language():
    with open(UTIL) as f:
        source = f.read()
    reading = source[source.index('public static class SystemAuditPolicy'):source.index('public static class Host')]
    # auditpol's report names its columns and values in the display language; the audit API answers in flags.
    for text in ('auditpol', 'Process', 'Inclusion Setting', 'Subcategory GUID', 'Split(', 'Parse(', '"Success'):
        assert text not in reading, text
    assert 'AuditQuerySystemPolicy' in reading and 'AuditSetSystemPolicy' in reading and 'AuditFree(buffer)' in reading


def test_flags_are_the_documented_policy_audit_event_values(evidence):
    # POLICY_AUDIT_EVENT_NONE (4) for neither: 0 is POLICY_AUDIT_EVENT_UNCHANGED, which would set nothing back.
    assert evidence['audit_flags'] == '4,1,2,3'
    assert evidence['audit_bools'] == 'False,False|False,False|True,True', 'a query may give 0 or NONE for no auditing'


def test_logging_adds_only_the_audit_settings_a_level_needs_to_what_the_host_has(evidence):
    assert evidence['audit_plan_none'] == '', 'none changes nothing the host had'
    assert evidence['audit_plan_exceptions'] == '', 'Success on connections (5156) is already there'
    assert evidence['audit_plan_refused'].split(';') == [
        '%s:2 (failure)' % DROP, '%s:3 (success and failure)' % CONNECTION]
    assert evidence['audit_plan_all'] == evidence['audit_plan_refused']


def test_logging_back_to_none_puts_back_what_the_host_had_and_only_that(evidence):
    assert evidence['audit_plan_back_to_none'].split(';') == [
        '%s:4 (no auditing)' % DROP, '%s:1 (success)' % CONNECTION], 'Success on connections was the admin\'s'
    assert evidence['audit_plan_refused_again'] == '', 'in sync: nothing to do'
    assert evidence['audit_restore'] == evidence['audit_plan_back_to_none'], 'state=absent puts back the same'
    assert evidence['audit_plan_back_to_none_from_json'] == evidence['audit_plan_back_to_none'], \
        'flags read back from the state file, whatever number type its JSON gives'
    assert evidence['audit_unreadable_saved'] == '0,0'


def test_a_subcategory_losing_one_flag_and_keeping_the_other_is_cleared_first(evidence):
    # Whether AuditSetSystemPolicy replaces or adds to a subcategory's flags is not documented; the LSA call
    # before it added unless combined with NONE. Clearing first is right under either reading.
    assert evidence['audit_set_steps_back_to_none'] == '%s:4 (no auditing) then %s;%s' % (
        CONNECTION, '%s:4 (no auditing)' % DROP, '%s:1 (success)' % CONNECTION)
    assert evidence['audit_set_steps_all'] == evidence['audit_plan_all'], 'only adding: one call'


def test_a_setting_saved_by_an_earlier_release_is_still_put_back(evidence):
    # Earlier releases saved auditpol's English Inclusion Setting.
    assert [evidence['audit_saved_legacy_' + t] for t in ('No_Auditing', 'Success', 'Failure', 'Success_and_Failure',
                                                          'success_and_failure')] == [
        'False,False', 'True,False', 'False,True', 'True,True', 'True,True']
    assert evidence['audit_plan_back_to_none_legacy'] == evidence['audit_plan_back_to_none']
    assert evidence['audit_restore_legacy'] == evidence['audit_restore']


def test_a_localized_setting_saved_by_an_earlier_release_is_left_as_it_is_not_wiped(evidence):
    # The earlier reading took any text without "success" or "failure" in it for no auditing, so an admin's
    # "Erfolg und Fehler" (success and failure) would have been put back as no auditing.
    assert evidence['audit_saved_localized'] == 'unknown|unknown'
    assert evidence['audit_plan_back_to_none_localized'] == '', 'nothing is taken away that may have been the admin\'s'
    assert evidence['audit_restore_localized'] == '', 'state=absent sets nothing it cannot know'
    assert evidence['audit_unreadable_localized'] == '%s;%s' % (DROP, CONNECTION), 'the module warns of each'
    assert evidence['audit_restore_nothing_saved'] == '|%s;%s' % (DROP, CONNECTION), \
        'nothing saved (the column names were localized too): nothing set, a warning each'


def test_a_token_without_sesecurityprivilege_gets_an_error_that_says_so(evidence):
    for key in ('audit_denied', 'audit_not_held'):
        assert 'SeSecurityPrivilege' in evidence[key] and 'administrator' in evidence[key], key
    assert evidence['audit_invalid'] == 'AuditSetSystemPolicy failed: Win32 error 87'


def test_the_bfe_collects_net_events_and_allow_events_only_while_exceptions_need_them(evidence):
    assert evidence['options_exceptions'] == ("1,16|WFP's net event keywords are 0x0, not 0x10 "
                                              "(the exception counters count allow events)")
    collect, drift = evidence['options_no_exceptions'].split('|', 1)
    assert collect == '1,1', 'collection on; the keywords the host had before, not ours'
    assert drift.startswith('WFP does not collect net events')
    assert evidence['options_exceptions_gone'].startswith('1,1|')


def test_finished_checks_have_the_shape_of_the_linux_probe_and_a_verdict_each(evidence):
    finished = dict((c.split('|')[0], c.split('|')[1:]) for c in evidence['finish'].split(';'))
    assert finished['udp ipv4 bound to Ethernet'] == ['refused', '7'], 'the drop event of port 50000'
    assert finished['tcp ipv4 bound to Ethernet'] == ['refused', '7'], 'WSAEACCES'
    assert finished['udp ipv6 bound to Ethernet'] == ['LEAKED', '7'], 'sent, and no drop event'
