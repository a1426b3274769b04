#!powershell

# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic
#AnsibleRequires -CSharpUtil Ansible.Privilege
#AnsibleRequires -CSharpUtil ..module_utils.WfpKillSwitch

# The policy is validated and rendered on the controller by the action plugin of
# the same name (module_utils/win_wfp.py), which also compares what this module
# reads back with what it rendered. This module only:
#   _phase=read   binds the tunnel aliases to LUIDs and reads back our WFP objects,
#                 the resolver settings and what the host runs beside them;
#   _phase=apply  replaces our WFP objects in one BFE transaction (with the
#                 commit-confirmed task first), then sets the resolver;
#   _phase=evidence  (after an apply, when probe is on) the counters and the live probe again;
#   confirm       removes the commit-confirmed task;
#   state=absent  removes everything of ours and restores DNS.
# Windows Firewall's own policy (profiles, rules, stores) is never touched.

$spec = @{
    options = @{
        state = @{ type = 'str'; choices = 'present', 'absent'; default = 'present' }
        tunnel_interfaces = @{ type = 'list'; elements = 'str'; default = @() }
        endpoints = @{ type = 'list'; elements = 'dict'; default = @() }
        endpoint_programs = @{ type = 'list'; elements = 'str'; default = @() }
        dns_servers = @{ type = 'list'; elements = 'str'; default = @() }
        doh_servers = @{ type = 'list'; elements = 'str'; default = @() }
        allow_lan = @{ type = 'bool'; default = $false }
        management = @{ type = 'list'; elements = 'dict'; default = @() }
        exceptions = @{ type = 'list'; elements = 'dict'; default = @() }
        configure_resolver = @{ type = 'bool'; default = $true }
        block_browser_doh = @{ type = 'bool'; default = $false }
        block_vm_traffic = @{ type = 'bool'; default = $false }
        confirm_timeout = @{ type = 'int'; default = 0 }
        confirm = @{ type = 'bool'; default = $false }
        state_dir = @{ type = 'path'; default = '%ProgramData%\vpnguard-killswitch' }
        log = @{ type = 'str'; choices = 'none', 'exceptions', 'refused', 'all'; default = 'none' }
        probe = @{ type = 'bool'; default = $false }
        probe_canary_v4 = @{ type = 'str'; default = '203.0.113.254' }
        probe_canary_v6 = @{ type = 'str'; default = '2001:db8:ffff::fe' }
        _rendered = @{ type = 'dict' }
        _phase = @{ type = 'str'; choices = 'read', 'apply', 'evidence'; default = 'read' }
        _task_script = @{ type = 'str' }
        _csharp_source = @{ type = 'str' }
        _boottime_keys = @{ type = 'list'; elements = 'str'; default = @(); no_log = $false }  # filter keys (GUIDs), no secret
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)
$ErrorActionPreference = 'Stop'

$Name = 'vpnguard-killswitch'
$Wfp = 'ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch'
$ProviderKey = '5b0c7a2e-8f3d-4c61-9a47-2d1e6f0b9c31'
$SublayerKey = '9e4a6d10-3b7c-4f25-8e19-c6a2b5d7f048'
$StateDir = [Environment]::ExpandEnvironmentVariables($module.Params.state_dir)
$StatePath = Join-Path -Path $StateDir -ChildPath 'state.json'
$RollbackTask = "$Name-rollback"
$RebindTask = "$Name-rebind"
$LedgerPath = Join-Path -Path $StateDir -ChildPath 'counters.json'
$Audit = "$Wfp.AuditPolicy" -as [type]
$SystemAudit = "$Wfp.SystemAuditPolicy" -as [type]
$Options = "$Wfp.EngineOptions" -as [type]
$ProbeVerdict = "$Wfp.ProbeVerdict" -as [type]
# Chrome and Edge take DnsOverHttpsMode, Firefox its DNSOverHTTPS policy (enterprise policies in HKLM).
$BrowserPolicies = @(
    @{ Path = 'HKLM:\SOFTWARE\Policies\Google\Chrome'; Name = 'DnsOverHttpsMode'; Type = 'String'; Value = 'off' }
    @{ Path = 'HKLM:\SOFTWARE\Policies\Microsoft\Edge'; Name = 'DnsOverHttpsMode'; Type = 'String'; Value = 'off' }
    @{ Path = 'HKLM:\SOFTWARE\Policies\Mozilla\Firefox\DNSOverHTTPS'; Name = 'Enabled'; Type = 'DWord'; Value = 0 }
    @{ Path = 'HKLM:\SOFTWARE\Policies\Mozilla\Firefox\DNSOverHTTPS'; Name = 'Locked'; Type = 'DWord'; Value = 1 }
)

Function Read-State {
    if (Test-Path -LiteralPath $StatePath) {
        return [Ansible.Basic.AnsibleModule]::FromJson((Get-Content -LiteralPath $StatePath -Raw))
    }
    @{ bindings = @{}; interface_dns = @{}; browser = @{}; applied = $null }
}

Function Save-State {
    param($State)
    if (-not (Test-Path -LiteralPath $StateDir)) { New-Item -Path $StateDir -ItemType Directory | Out-Null }
    # Written beside and moved over: a crash cannot leave half a file.
    Set-Content -LiteralPath "$StatePath.tmp" -Value ([Ansible.Basic.AnsibleModule]::ToJson($State)) -Encoding UTF8
    Move-Item -LiteralPath "$StatePath.tmp" -Destination $StatePath -Force
}

Function Get-Program {
    param($Rendered)
    @($Rendered.filters | ForEach-Object { $_.conditions } | Where-Object { $_.field -eq 'ALE_APP_ID' } |
            ForEach-Object { $_.value } | Sort-Object -Unique)
}

Function Get-TunnelAdapter {
    # Tunnel adapters by GUID, the key DNS state is kept under (aliases can be renamed).
    param([string[]]$Pattern)
    @(Get-NetAdapter -IncludeHidden -ErrorAction SilentlyContinue | Where-Object {
            $alias = $_.Name
            @($Pattern | Where-Object { [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.TunnelBinding]::AliasMatches($_, $alias) }).Count
        })
}

Function Get-StaticDns {
    # The servers set by hand: NameServer in the interface's TCP/IP parameters. Servers that came from
    # DHCP or router advertisements are not static, and are restored by resetting to automatic.
    param([string]$Guid)
    $servers = @()
    foreach ($stack in 'Tcpip', 'Tcpip6') {
        $key = "HKLM:\SYSTEM\CurrentControlSet\Services\$stack\Parameters\Interfaces\$Guid"
        $value = (Get-ItemProperty -LiteralPath $key -Name NameServer -ErrorAction SilentlyContinue).NameServer
        if ($value) { $servers += @($value -split '[ ,]+' | Where-Object { $_ }) }
    }
    , $servers
}

Function Get-DnsDrift {
    param($Rendered)
    $problems = @()
    $servers = @($Rendered.dns.servers)
    if ($module.Params.configure_resolver -and $servers.Count) {
        $own = @(Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $Name })
        if ($own.Count -ne 1 -or (@($own[0].NameServers) -join ',') -ne ($servers -join ',')) {
            $problems += "the NRPT rule for every name does not send it to $($servers -join ', ')"
        }
        foreach ($adapter in Get-TunnelAdapter -Pattern @($Rendered.tunnel_interfaces)) {
            # Listed per address family, IPv4 first: compared as sets.
            $now = @(Get-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex | ForEach-Object { $_.ServerAddresses } | Sort-Object)
            if (($now -join ',') -ne (@($servers | Sort-Object) -join ',')) { $problems += "the DNS servers of $($adapter.Name) differ" }
        }
    }
    if ($module.Params.block_browser_doh) {
        foreach ($p in $BrowserPolicies) {
            if ((Get-ItemProperty -LiteralPath $p.Path -Name $p.Name -ErrorAction SilentlyContinue).($p.Name) -ne $p.Value) {
                $problems += "the browser policy $($p.Path)\$($p.Name) is not $($p.Value)"
            }
        }
    }
    $problems
}

Function Get-Environment {
    # What decides beside us, reported so that an audit can say what the kill switch stands next to.
    $service = { param($n) $s = Get-Service -Name $n -ErrorAction SilentlyContinue; if ($s) { [string]$s.Status } else { 'missing' } }
    $vm = @(Get-NetAdapter -IncludeHidden -ErrorAction SilentlyContinue | Where-Object {
            $_.InterfaceDescription -like 'Hyper-V Virtual Ethernet*' -or $_.Name -like 'vEthernet*' } | ForEach-Object { $_.Name })
    @{
        bfe = & $service 'BFE'
        mpssvc = & $service 'MpsSvc'
        vm_switches = $vm
        nat = @(Get-NetNat -ErrorAction SilentlyContinue | ForEach-Object { $_.Name })
        # A physical adapter bound to the Hyper-V switch protocol carries an external switch: its VMs
        # reach the wire without passing this host's IP stack, so no filter of the host sees them.
        external_switch_adapters = @(Get-NetAdapterBinding -ComponentID vms_pp -ErrorAction SilentlyContinue |
                Where-Object { $_.Enabled } | ForEach-Object { $_.Name })
        # WSL, Hyper-V and the like, as the Hyper-V firewall knows them (Windows 11 22H2 and later).
        vm_creators = @(Get-VmCreator | ForEach-Object { $_.FriendlyName })
        sandbox = Test-Path -LiteralPath (Join-Path $env:SystemRoot 'System32\WindowsSandbox.exe')
    }
}

Function Get-VmCreator {
    if (Get-Command -Name Get-NetFirewallHyperVVMCreator -ErrorAction SilentlyContinue) {
        @(Get-NetFirewallHyperVVMCreator)
    }
}

Function Get-VmBlockRule {
    param($Rendered)
    if (Get-Command -Name Get-NetFirewallHyperVRule -ErrorAction SilentlyContinue) {
        @(Get-NetFirewallHyperVRule -Name $Rendered.vm.rule.Name -ErrorAction SilentlyContinue)
    }
}

Function Get-VmDrift {
    param($Rendered)
    $rule = @(Get-VmBlockRule -Rendered $Rendered)
    if ($Rendered.vm.block -and -not $rule.Count) { "the Hyper-V firewall rule $($Rendered.vm.rule.Name) is missing" }
    if (-not $Rendered.vm.block -and $rule.Count) { "the Hyper-V firewall rule $($Rendered.vm.rule.Name) is not in the policy" }
}

Function Set-VmBlock {
    # Our one object outside WFP: a Hyper-V firewall rule that blocks what VMs send (it only blocks).
    param($Rendered)
    $rule = @(Get-VmBlockRule -Rendered $Rendered)
    if ($Rendered.vm.block -and -not $rule.Count) {
        if (-not (Get-Command -Name New-NetFirewallHyperVRule -ErrorAction SilentlyContinue)) {
            $module.FailJson('block_vm_traffic needs the Hyper-V firewall (Windows 11 22H2 or later); the WFP filters are in place')
        }
        $spec = $Rendered.vm.rule
        New-NetFirewallHyperVRule -Name $spec.Name -DisplayName $spec.DisplayName -Direction $spec.Direction -Action $spec.Action | Out-Null
    }
    elseif (-not $Rendered.vm.block -and $rule.Count) {
        Remove-NetFirewallHyperVRule -Name $Rendered.vm.rule.Name
    }
}

Function Set-Resolver {
    param($Rendered, $State)
    $servers = @($Rendered.dns.servers)
    if (-not ($module.Params.configure_resolver -and $servers.Count)) {
        foreach ($rule in @(Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $Name })) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
        return
    }
    foreach ($rule in @(Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $Name })) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
    Add-DnsClientNrptRule -Namespace $Rendered.dns.namespace -NameServers $servers -Comment $Name
    foreach ($adapter in Get-TunnelAdapter -Pattern @($Rendered.tunnel_interfaces)) {
        $guid = [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.DnsRollback]::NormalGuid($adapter.InterfaceGuid)
        if (-not $State.interface_dns.ContainsKey($guid)) {
            # The originals, from before our first change only.
            $State.interface_dns[$guid] = @{ alias = $adapter.Name; static = (Get-StaticDns -Guid $guid) }
            Save-State -State $State
        }
        Set-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex -ServerAddresses $servers
    }
}

Function Set-BrowserPolicy {
    param($State)
    foreach ($p in $BrowserPolicies) {
        $id = "$($p.Path)\$($p.Name)"
        if (-not $State.browser.ContainsKey($id)) {
            $State.browser[$id] = (Get-ItemProperty -LiteralPath $p.Path -Name $p.Name -ErrorAction SilentlyContinue).($p.Name)
            Save-State -State $State
        }
        if (-not (Test-Path -LiteralPath $p.Path)) { New-Item -Path $p.Path -Force | Out-Null }
        New-ItemProperty -LiteralPath $p.Path -Name $p.Name -PropertyType $p.Type -Value $p.Value -Force | Out-Null
    }
}

Function Restore-BrowserPolicy {
    param($State)
    foreach ($id in @($State.browser.Keys)) {
        $path = Split-Path -Path $id -Parent
        $valueName = Split-Path -Path $id -Leaf
        if ($null -eq $State.browser[$id]) {
            Remove-ItemProperty -LiteralPath $path -Name $valueName -ErrorAction SilentlyContinue
        }
        else {
            Set-ItemProperty -LiteralPath $path -Name $valueName -Value $State.browser[$id]
        }
    }
}

Function Get-LegacyPolicy {
    # What 0.x left in Windows Firewall's local policy store: its rules, its profile settings (saved
    # originals in its state file) and the tunnel adapters' DNS servers. The only reason this module
    # reads or writes Windows Firewall's policy at all is to take that back out.
    $path = Join-Path -Path $StateDir -ChildPath 'win_wfp_killswitch.json'
    @{
        path = $path
        saved = Test-Path -LiteralPath $path
        rules = @(Get-NetFirewallRule -PolicyStore localhost -Group $Name -ErrorAction SilentlyContinue | ForEach-Object { $_.Name })
    }
}

Function Remove-LegacyPolicy {
    $legacy = Get-LegacyPolicy
    foreach ($rule in $legacy.rules) { Remove-NetFirewallRule -PolicyStore localhost -Name $rule }
    if ($legacy.saved) {
        $old = [Ansible.Basic.AnsibleModule]::FromJson((Get-Content -LiteralPath $legacy.path -Raw))
        if ($old.profiles) {
            foreach ($profileName in @($old.profiles.Keys)) {
                $p = $old.profiles[$profileName]
                Set-NetFirewallProfile -PolicyStore localhost -Name $profileName -Enabled $p.Enabled `
                    -DefaultOutboundAction $p.DefaultOutboundAction -AllowLocalFirewallRules $p.AllowLocalFirewallRules
            }
        }
        if ($old.interface_dns) {
            foreach ($alias in @($old.interface_dns.Keys)) {
                $adapter = Get-NetAdapter -Name $alias -IncludeHidden -ErrorAction SilentlyContinue
                if (-not $adapter) { continue }
                $servers = @($old.interface_dns[$alias].IPv4) + @($old.interface_dns[$alias].IPv6) | Where-Object { $_ }
                if ($servers) { Set-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex -ServerAddresses $servers }
                else { Set-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex -ResetServerAddresses }
            }
        }
        Remove-Item -LiteralPath $legacy.path -Force
    }
    elseif ($legacy.rules.Count) {
        # Without the saved originals: what an untouched local group policy has.
        Set-NetFirewallProfile -PolicyStore localhost -Name @('Domain', 'Private', 'Public') -DefaultOutboundAction NotConfigured `
            -AllowLocalFirewallRules NotConfigured
    }
}

Function Enable-AuditPrivilege {
    # The audit API reads and sets the Security audit policy only with SeSecurityPrivilege
    # (learn.microsoft.com/windows/win32/api/ntsecapi/nf-ntsecapi-auditquerysystempolicy, .../nf-ntsecapi-auditsetsystempolicy),
    # which an administrator's token holds, disabled. Enabled before anything changes, strictly: a token without it
    # fails here, with the host as it was. The caller disposes of the enabler, which disables it again.
    try {
        New-Object -TypeName Ansible.Privilege.PrivilegeEnabler -ArgumentList $true, 'SeSecurityPrivilege'
    }
    catch {
        $module.FailJson("the kill switch reads and sets the Security audit policy (log, and what state=absent puts back), " +
            "which needs SeSecurityPrivilege; this connection's token does not hold it (connect as an administrator); " +
            "nothing was changed: $($_.Exception.Message)", $_)
    }
}

Function Get-AuditSetting {
    # The two Filtering Platform subcategories, by GUID, as flags from the audit API: no text, so no display language.
    $SystemAudit::Query()
}

Function Get-EvidenceSetting {
    # What the counters and the log need of the host (net events, allow events, audit policy), and the drift.
    param($Rendered, $State)
    $saved = $State.evidence_settings
    $countAllows = @($Rendered.counters.names.Keys | Where-Object { $_ -like 'exception_*' }).Count -gt 0
    $options = $Options::Targets($engine.GetOption(0), $engine.GetOption(1), $saved, $countAllows)
    $audit = Get-AuditSetting
    $plan = $Audit::Plan($module.Params.log, $audit, $(if ($saved) { $saved.audit }))
    @{
        options = $options
        audit = $audit
        plan = $plan
        drift = @($options.drift) + @($plan.Keys | ForEach-Object { "the Security log does not audit $($Audit::NameOf($_)) as killswitch_log: $($module.Params.log) asks" })
    }
}

Function Set-EvidenceSetting {
    # Records what the host had before the first change (put back on state=absent), then sets what is needed.
    param($Rendered, $State)
    $wanted = Get-EvidenceSetting -Rendered $Rendered -State $State
    if (-not $State.evidence_settings) {
        $State.evidence_settings = @{ collect = $engine.GetOption(0); keywords = $engine.GetOption(1); audit = $wanted.audit }
        Save-State -State $State
    }
    $engine.SetOption(0, $wanted.options.collect)
    $engine.SetOption(1, $wanted.options.keywords)
    $SystemAudit::Set($wanted.plan)
}

Function Restore-EvidenceSetting {
    param($State)
    $saved = $State.evidence_settings
    if (-not $saved) { return }
    $engine.SetOption(0, [uint32]$saved.collect)
    $engine.SetOption(1, [uint32]$saved.keywords)
    # Saved as flags, or as the English text earlier releases saved; a setting that cannot be read is left alone.
    foreach ($guid in $Audit::Unreadable($saved.audit)) {
        $module.Warn("the $($Audit::NameOf($guid)) audit setting from before the kill switch was not recorded in a form " +
            'this version can read; it is left as it is')
    }
    $SystemAudit::Set($Audit::Restore($saved.audit))
}

Function Update-Counter {
    # Counts our filters' net events since the last run into the ledger kept on the host (counters.json): the
    # BFE keeps them in a bounded buffer only. Returns the ledger's totals and our filters' run-time ids.
    param($Rendered, [datetime]$Until)
    $ledger = if (Test-Path -LiteralPath $LedgerPath) { [Ansible.Basic.AnsibleModule]::FromJson((Get-Content -LiteralPath $LedgerPath -Raw)) }
    else { @{ since = $null; totals = @{}; filter_ids = @{}; boot = $null } }
    $boot = [string](Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')
    $ids = $engine.FilterIds()
    if ($ledger.boot -eq $boot) {
        # Ids of filters replaced since the last run still name the events they logged; a reboot gives new ids.
        foreach ($id in @($ledger.filter_ids.Keys)) { if (-not $ids.ContainsKey($id)) { $ids[$id] = $ledger.filter_ids[$id] } }
    }
    # Times are kept as FILETIMEs (UTC): no text to parse in whatever culture the host has.
    $since = [datetime]::FromFileTimeUtc($(if ($ledger.since) { [long]$ledger.since } else { 0 }))
    $events = @()
    try {
        $events = $engine.NetEvents($since, $Until)
    }
    catch {
        # Net event collection off (FWP_E_NET_EVENTS_DISABLED): reported as drift; the counters stand still.
        $module.Warn("the kill switch's counters could not read WFP's net events: $($_.Exception.Message)")
    }
    $totals = ("$Wfp.NetEvents" -as [type])::Tally($events, $ids, $Rendered.counters.filters, $ledger.totals, @($Rendered.counters.names.Keys))
    if (-not (Test-Path -LiteralPath $StateDir)) { New-Item -Path $StateDir -ItemType Directory | Out-Null }
    $ledger = @{ since = $Until.ToFileTimeUtc(); totals = $totals; filter_ids = $engine.FilterIds(); boot = $boot }
    Set-Content -LiteralPath "$LedgerPath.tmp" -Value ([Ansible.Basic.AnsibleModule]::ToJson($ledger)) -Encoding UTF8
    Move-Item -LiteralPath "$LedgerPath.tmp" -Destination $LedgerPath -Force
    @{ totals = $totals; ids = $ids }
}

Function Get-Evidence {
    # The counters (always), and with probe the live probe, the tunnel and the default routes outside it.
    param($Rendered)
    $before = Update-Counter -Rendered $Rendered -Until ([datetime]::UtcNow)
    $counters = @{}
    foreach ($name in @($Rendered.counters.names.Keys)) {
        $counters[$name] = @{ packets = $before.totals[$name]; bytes = $null; counts = $Rendered.counters.names[$name] }
    }
    $evidence = @{ counters = $counters }
    if ($module.Params.probe) {
        $interfaces = ("$Wfp.Host" -as [type])::Interfaces()
        $checks = $ProbeVerdict::Plan($interfaces, @($Rendered.tunnel_interfaces), @($Rendered.dns.servers).Count -gt 0,
            $module.Params.probe_canary_v4, $module.Params.probe_canary_v6)
        $start = [datetime]::UtcNow
        ("$Wfp.Host" -as [type])::Run($checks)
        Start-Sleep -Milliseconds 500  # the BFE logs net events asynchronously
        $after = Update-Counter -Rendered $Rendered -Until ([datetime]::UtcNow)
        $probeEvents = @()
        try { $probeEvents = $engine.NetEvents($start.AddSeconds(-1), [datetime]::UtcNow) } catch { $probeEvents = @() }
        # Without events a send that went through counts as LEAKED: the probe fails closed.
        $results = $ProbeVerdict::Finish($checks, $probeEvents, $after.ids)
        $routes = @(Get-NetRoute -PolicyStore ActiveStore -ErrorAction SilentlyContinue | ForEach-Object {
                @{ DestinationPrefix = $_.DestinationPrefix; InterfaceAlias = $_.InterfaceAlias; NextHop = $_.NextHop; RouteMetric = $_.RouteMetric } })
        $evidence.probe = @{
            checks = $results
            leaked = @($results | Where-Object { $_.verdict -eq 'LEAKED' }).Count -gt 0
            counters_after = $after.totals
        }
        $evidence.tunnel = $ProbeVerdict::Tunnel($interfaces, @($Rendered.tunnel_interfaces))
        $evidence.routes_outside_tunnel = $ProbeVerdict::RoutesOutsideTunnel($routes, @($Rendered.tunnel_interfaces))
    }
    $evidence
}

Function Register-HostTask {
    # The task script (rendered on the controller) and the C# it loads live in the state directory, so that
    # the rollback and the rebind run without Ansible. Both run as SYSTEM; both fail closed (see the script).
    param([int]$RollbackAfter)
    Set-Content -LiteralPath (Join-Path $StateDir 'WfpKillSwitch.cs') -Value $module.Params._csharp_source -Encoding UTF8
    $script = Join-Path $StateDir 'task.ps1'
    Set-Content -LiteralPath $script -Value $module.Params._task_script -Encoding UTF8
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $run = { param($mode) New-ScheduledTaskAction -Execute 'powershell.exe' -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$script`" -Mode $mode" }
    # Re-bind on every boot and whenever a network connects (an adapter arrived: NetworkProfile event 10000).
    $class = Get-CimClass -ClassName MSFT_TaskEventTrigger -Namespace Root/Microsoft/Windows/TaskScheduler
    $arrival = New-CimInstance -CimClass $class -ClientOnly
    $arrival.Enabled = $true
    $arrival.Subscription = '<QueryList><Query Id="0" Path="Microsoft-Windows-NetworkProfile/Operational"><Select Path="Microsoft-Windows-NetworkProfile/Operational">*[System[EventID=10000]]</Select></Query></QueryList>'
    Register-ScheduledTask -TaskName $RebindTask -Action (& $run 'rebind') -Principal $principal -Force `
        -Trigger @((New-ScheduledTaskTrigger -AtStartup), $arrival) | Out-Null
    if ($RollbackAfter -gt 0) {
        Register-ScheduledTask -TaskName $RollbackTask -Action (& $run 'rollback') -Principal $principal -Force `
            -Trigger (New-ScheduledTaskTrigger -Once -At (Get-Date).AddSeconds($RollbackAfter)) | Out-Null
    }
}

$state = Read-State
$engine = New-Object -TypeName "$Wfp.Engine" -ArgumentList $ProviderKey, $SublayerKey
$auditPrivilege = $null
try {
    if ($module.Params.confirm) {
        # The controller reached the host over a fresh connection: the change stays.
        $task = Get-ScheduledTask -TaskName $RollbackTask -ErrorAction SilentlyContinue
        if ($task -and -not $module.CheckMode) { Unregister-ScheduledTask -TaskName $RollbackTask -Confirm:$false }
        Remove-Item -LiteralPath (Join-Path $StateDir 'previous.json') -ErrorAction SilentlyContinue -WhatIf:$module.CheckMode
        $module.Result.changed = [bool]$task
    }
    elseif ($module.Params.state -eq 'present') {
        $rendered = $module.Params._rendered
        if ($null -eq $rendered) {
            $module.FailJson('run this module through its action plugin, vpnguard.killswitch.win_wfp_killswitch, ' +
                'which validates and renders the policy on the controller')
        }
        $bindings = [Ansible.Basic.AnsibleModule]::FromJson([Ansible.Basic.AnsibleModule]::ToJson(
                [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.TunnelBinding]::Bind(
                    @($rendered.tunnel_interfaces), [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.Engine]::AdapterLuids(), $state.bindings)))
        $programs = [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.Engine]::AppIds(@(Get-Program -Rendered $rendered))
        $bootKeys = @($rendered.boottime | ForEach-Object { $_.key })
        if ($module.Params._phase -eq 'read') {
            $auditPrivilege = Enable-AuditPrivilege
            $found = $engine.Read($bindings, $programs, $bootKeys)
            $module.Result.found = $found
            $legacy = Get-LegacyPolicy
            $module.Result.dns_drift = @(Get-DnsDrift -Rendered $rendered) + @(Get-VmDrift -Rendered $rendered) +
            @(if ($legacy.saved -or $legacy.rules.Count) { 'the Windows Firewall rules and profile settings of 0.x are still in the local policy store' })
            $module.Result.environment = Get-Environment
            $module.Result.bindings = $bindings
            $module.Result.evidence_drift = @((Get-EvidenceSetting -Rendered $rendered -State $state).drift)
            # The ledger of counters is the only file a read writes, in check mode too: it is the audit's record.
            if ($found.provider) { foreach ($item in (Get-Evidence -Rendered $rendered).GetEnumerator()) { $module.Result[$item.Key] = $item.Value } }
        }
        elseif ($module.Params._phase -eq 'evidence') {
            foreach ($item in (Get-Evidence -Rendered $rendered).GetEnumerator()) { $module.Result[$item.Key] = $item.Value }
        }
        elseif (-not $module.CheckMode) {
            $auditPrivilege = Enable-AuditPrivilege
            if ($module.Params.confirm_timeout -gt 0 -and $state.applied) {
                # What the rollback puts back if the controller does not confirm in time.
                Set-Content -LiteralPath (Join-Path $StateDir 'previous.json') -Encoding UTF8 `
                    -Value ([Ansible.Basic.AnsibleModule]::ToJson(@{ rendered = $state.applied; bindings = $state.bindings }))
            }
            Remove-LegacyPolicy
            $state.applied = $rendered
            $state.bindings = $bindings
            Save-State -State $state
            Register-HostTask -RollbackAfter $module.Params.confirm_timeout
            $engine.Apply($rendered, $bindings)
            Set-VmBlock -Rendered $rendered
            Set-Resolver -Rendered $rendered -State $state
            if ($module.Params.block_browser_doh) { Set-BrowserPolicy -State $state }
            Set-EvidenceSetting -Rendered $rendered -State $state
            Clear-DnsClientCache
            $module.Result.changed = $true
        }
    }
    else {
        $bootKeys = @($module.Params._boottime_keys)
        $found = $engine.Read(@{}, @{}, $bootKeys)
        $nrpt = @(Get-DnsClientNrptRule | Where-Object { $_.Comment -eq $Name })
        $tasks = @(Get-ScheduledTask -TaskName "$Name-*" -ErrorAction SilentlyContinue)
        $vmRule = @(Get-VmBlockRule -Rendered @{ vm = @{ rule = @{ Name = "$Name-vm-block" } } })
        $legacy = Get-LegacyPolicy
        $module.Result.changed = $found.provider -or $null -ne $found.sublayer -or $found.filters.Count -or $found.boottime.Count -or
        $nrpt.Count -or $tasks.Count -or $vmRule.Count -or $legacy.saved -or $legacy.rules.Count -or (Test-Path -LiteralPath $StatePath)
        if ($module.Result.changed -and -not $module.CheckMode) {
            if ($state.evidence_settings) { $auditPrivilege = Enable-AuditPrivilege }
            foreach ($task in $tasks) { Unregister-ScheduledTask -TaskName $task.TaskName -Confirm:$false }
            Remove-LegacyPolicy
            $engine.RemoveAll($bootKeys)
            if ($vmRule.Count) { Remove-NetFirewallHyperVRule -Name "$Name-vm-block" }
            foreach ($rule in $nrpt) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
            $present = @(Get-NetAdapter -IncludeHidden -ErrorAction SilentlyContinue | ForEach-Object { [string]$_.InterfaceGuid })
            $plan = [ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch.DnsRollback]::Plan($state.interface_dns, $present)
            foreach ($step in $plan) {
                $adapter = Get-NetAdapter -IncludeHidden | Where-Object { [string]$_.InterfaceGuid -eq $step.guid }
                switch ($step.action) {
                    'reset' { Set-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex -ResetServerAddresses }
                    'set' { Set-DnsClientServerAddress -InterfaceIndex $adapter.ifIndex -ServerAddresses $step.servers }
                    'skip' { $module.Warn("adapter $($step.alias) ($($step.guid)) is gone; its DNS servers are not restored") }
                }
            }
            Restore-BrowserPolicy -State $state
            Restore-EvidenceSetting -State $state
            Clear-DnsClientCache
            Remove-Item -LiteralPath $StateDir -Recurse -Force -ErrorAction SilentlyContinue
        }
    }
}
finally {
    if ($null -ne $auditPrivilege) { $auditPrivilege.Dispose() }
    $engine.Dispose()
}
$module.ExitJson()
