#!powershell

# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

#AnsibleRequires -CSharpUtil Ansible.Basic

# The policy is validated and rendered on the controller by the action plugin
# of the same name (plugins/action/win_wfp_killswitch.py, with
# module_utils/win_firewall.py); this module applies the rendered rule specs,
# profile settings and resolver, and removes all of its own on absent.

$entry = @{ type = 'list'; elements = 'dict'; default = @() }
$spec = @{
    options = @{
        state = @{ type = 'str'; choices = 'present', 'absent'; default = 'present' }
        tunnel_interfaces = @{ type = 'list'; elements = 'str'; default = @() }
        endpoints = $entry + @{
            options = @{
                address = @{ type = 'str'; required = $true }
                port = @{ type = 'int'; required = $true }
                protocol = @{ type = 'str'; choices = 'udp', 'tcp'; default = 'udp' }
            }
        }
        dns_servers = @{ type = 'list'; elements = 'str'; default = @() }
        doh_servers = @{ type = 'list'; elements = 'str'; default = @() }
        allow_lan = @{ type = 'bool'; default = $false }
        management = $entry + @{
            options = @{
                cidr = @{ type = 'str'; required = $true }
                port = @{ type = 'int'; required = $true }
                protocol = @{ type = 'str'; choices = 'udp', 'tcp'; default = 'tcp' }
            }
        }
        exceptions = $entry + @{
            options = @{
                program = @{ type = 'str'; required = $true }
            }
        }
        endpoint_programs = @{ type = 'list'; elements = 'str'; default = @() }
        merge_local_rules = @{ type = 'bool'; default = $false }
        configure_resolver = @{ type = 'bool'; default = $true }
        state_dir = @{ type = 'path'; default = '%ProgramData%\vpnguard-killswitch' }
        _rendered = @{ type = 'dict' }
    }
    supports_check_mode = $true
}
$module = [Ansible.Basic.AnsibleModule]::Create($args, $spec)

$ErrorActionPreference = 'Stop'
$Group = 'vpnguard-killswitch'
$Store = 'localhost'
$Profiles = 'Domain', 'Private', 'Public'
$StatePath = Join-Path -Path ([Environment]::ExpandEnvironmentVariables($module.Params.state_dir)) -ChildPath 'win_wfp_killswitch.json'
$check = $module.CheckMode

Function Get-Fingerprint {
    # A rule is never edited in place: its name carries a digest of what it
    # says, so that a changed rule is a new rule and the old one is removed.
    param([System.Collections.IDictionary]$Rule)
    $text = ($Rule.Keys | Where-Object { $_ -ne 'Name' } | Sort-Object | ForEach-Object {
            '{0}={1}' -f $_, (@($Rule[$_]) -join ',')
        }) -join ';'
    $sha = [System.Security.Cryptography.SHA256]::Create()
    try {
        $bytes = $sha.ComputeHash([System.Text.Encoding]::UTF8.GetBytes($text))
    }
    finally {
        $sha.Dispose()
    }
    ([System.BitConverter]::ToString($bytes) -replace '-', '').Substring(0, 12).ToLowerInvariant()
}

Function Resolve-Alias {
    # InterfaceAlias is bound to the adapters present when a rule is made, so
    # patterns are matched here, against the adapters the host has now.
    param([string[]]$Pattern)
    $names = @(Get-NetAdapter -IncludeHidden -ErrorAction SilentlyContinue | Select-Object -ExpandProperty Name)
    @($names | Where-Object { $name = $_; @($Pattern | Where-Object { $name -like $_ }).Count -gt 0 } | Sort-Object -Unique)
}

Function Get-DesiredRule {
    param([object[]]$Spec)
    $aliases = @{}
    foreach ($item in $Spec) {
        $rule = [ordered]@{}
        foreach ($key in ($item.Keys | Sort-Object)) {
            $rule[$key] = $item[$key]
        }
        if ($rule.Contains('InterfaceAlias')) {
            $pattern = @($rule['InterfaceAlias'])
            $key = $pattern -join '|'
            if (-not $aliases.ContainsKey($key)) {
                $aliases[$key] = @(Resolve-Alias -Pattern $pattern)
            }
            if ($aliases[$key].Count -eq 0) {
                # Blocked, not leaked: nothing allows traffic on an adapter that does not exist.
                $module.Warn(('no adapter matches {0}; {1} is left out until one exists and this runs again' -f
                        ($pattern -join ', '), $rule['Name']))
                continue
            }
            $rule['InterfaceAlias'] = $aliases[$key]
        }
        $rule['Name'] = '{0}-{1}' -f $rule['Name'], (Get-Fingerprint -Rule $rule)
        $rule
    }
}

Function Get-OwnRule {
    @(Get-NetFirewallRule -PolicyStore $Store -Group $Group -ErrorAction SilentlyContinue |
            ForEach-Object {
                [ordered]@{
                    Name = $_.Name
                    DisplayName = $_.DisplayName
                    Action = [string]$_.Action
                    Direction = [string]$_.Direction
                    Enabled = [string]$_.Enabled
                }
            })
}

Function Set-Rule {
    param([object[]]$Desired, [object[]]$Existing)
    $existingByName = @{}
    foreach ($rule in $Existing) { $existingByName[$rule.Name] = $rule }
    $desiredByName = @{}
    foreach ($rule in $Desired) { $desiredByName[$rule['Name']] = $rule }
    $wantedNames = @($desiredByName.Keys)
    # A rule switched off or turned around behind our back is drift too.
    $stale = @($Existing | Where-Object {
            -not $desiredByName.ContainsKey($_.Name) -or $_.Enabled -ne 'True' -or
            $_.Action -ne $desiredByName[$_.Name]['Action']
        })
    $staleNames = @($stale | ForEach-Object { $_.Name })
    $missing = @($Desired | Where-Object { -not $existingByName.ContainsKey($_['Name']) -or $staleNames -contains $_['Name'] })
    if (-not $check) {
        # Never less strict than both the old and the new policy at any moment:
        # new blocks first, stale allows out before new allows in, stale blocks last.
        $order = @(
            @{ Add = $true; Action = 'Block' }, @{ Add = $false; Action = 'Allow' },
            @{ Add = $true; Action = 'Allow' }, @{ Add = $false; Action = 'Block' }
        )
        foreach ($step in $order) {
            if ($step.Add) {
                foreach ($rule in @($missing | Where-Object { $_['Action'] -eq $step.Action })) {
                    if ($staleNames -contains $rule['Name']) {
                        Remove-NetFirewallRule -PolicyStore $Store -Name $rule['Name']
                    }
                    $params = @{}
                    foreach ($key in $rule.Keys) { $params[$key] = $rule[$key] }
                    New-NetFirewallRule -PolicyStore $Store @params | Out-Null
                }
            }
            else {
                foreach ($rule in @($stale | Where-Object { $_.Action -eq $step.Action -and $wantedNames -notcontains $_.Name })) {
                    Remove-NetFirewallRule -PolicyStore $Store -Name $rule.Name
                }
            }
        }
    }
    @{ added = @($missing | ForEach-Object { $_['Name'] }); removed = $staleNames }
}

Function Get-ProfileSetting {
    $result = [ordered]@{}
    foreach ($p in (Get-NetFirewallProfile -PolicyStore $Store -Name $Profiles)) {
        $result[$p.Name] = [ordered]@{
            Enabled = [string]$p.Enabled
            DefaultOutboundAction = [string]$p.DefaultOutboundAction
            AllowLocalFirewallRules = [string]$p.AllowLocalFirewallRules
        }
    }
    $result
}

Function Set-ProfileSetting {
    param([System.Collections.IDictionary]$Setting)
    foreach ($name in $Setting.Keys) {
        $wanted = $Setting[$name]
        Set-NetFirewallProfile -PolicyStore $Store -Name $name -Enabled $wanted.Enabled `
            -DefaultOutboundAction $wanted.DefaultOutboundAction -AllowLocalFirewallRules $wanted.AllowLocalFirewallRules
    }
}

Function Get-OwnNrptRule {
    @(Get-DnsClientNrptRule -ErrorAction SilentlyContinue | Where-Object { $_.Comment -eq $Group })
}

Function Get-InterfaceDns {
    param([string]$Alias)
    [ordered]@{
        IPv4 = @(Get-DnsClientServerAddress -InterfaceAlias $Alias -AddressFamily IPv4 -ErrorAction SilentlyContinue |
                Select-Object -ExpandProperty ServerAddresses)
        IPv6 = @(Get-DnsClientServerAddress -InterfaceAlias $Alias -AddressFamily IPv6 -ErrorAction SilentlyContinue |
                Select-Object -ExpandProperty ServerAddresses)
    }
}

Function Set-InterfaceDns {
    param([string]$Alias, [string[]]$Servers)
    if ($Servers.Count -eq 0) {
        Set-DnsClientServerAddress -InterfaceAlias $Alias -ResetServerAddresses
    }
    else {
        Set-DnsClientServerAddress -InterfaceAlias $Alias -ServerAddresses $Servers
    }
}

Function Read-SavedState {
    if (Test-Path -LiteralPath $StatePath) {
        try {
            return (Get-Content -LiteralPath $StatePath -Raw | ConvertFrom-Json)
        }
        catch {
            $module.Warn("the saved originals in $StatePath are unreadable")
        }
    }
    $null
}

Function Save-State {
    param($State)
    $directory = Split-Path -Path $StatePath -Parent
    if (-not (Test-Path -LiteralPath $directory)) {
        New-Item -Path $directory -ItemType Directory | Out-Null
    }
    # Written beside and moved over, so that a crash cannot leave half a file.
    $temporary = "$StatePath.tmp"
    $State | ConvertTo-Json -Depth 5 | Set-Content -LiteralPath $temporary -Encoding UTF8
    Move-Item -LiteralPath $temporary -Destination $StatePath -Force
}

Function ConvertTo-Hashtable {
    param($Object)
    $table = [ordered]@{}
    if ($null -ne $Object) {
        foreach ($property in $Object.PSObject.Properties) { $table[$property.Name] = $property.Value }
    }
    $table
}

$saved = Read-SavedState
$state = [ordered]@{
    profiles = if ($saved) { ConvertTo-Hashtable $saved.profiles } else { $null }
    interface_dns = if ($saved) { ConvertTo-Hashtable $saved.interface_dns } else { [ordered]@{} }
}
$beforeProfiles = Get-ProfileSetting
$beforeRules = Get-OwnRule
$beforeNrpt = @(Get-OwnNrptRule | ForEach-Object { '{0} -> {1}' -f $_.Namespace, (@($_.NameServers) -join ', ') })
$module.Diff.before = @{
    rules = @($beforeRules | ForEach-Object { '{0} ({1})' -f $_.Name, $_.DisplayName } | Sort-Object)
    profiles = $beforeProfiles
    nrpt = $beforeNrpt
}
$changed = $false

if ($module.Params.state -eq 'present') {
    $rendered = $module.Params._rendered
    if ($null -eq $rendered) {
        $module.FailJson('run this module through its action plugin, vpnguard.killswitch.win_wfp_killswitch, ' +
            'which validates and renders the policy on the controller')
    }
    $desired = @(Get-DesiredRule -Spec $rendered.rules)
    # Allows are in place before outbound turns to Block, so that the management plane stays reachable.
    $ruleChange = Set-Rule -Desired $desired -Existing $beforeRules
    $changed = $changed -or $ruleChange.added.Count -gt 0 -or $ruleChange.removed.Count -gt 0

    $wantedProfiles = [ordered]@{}
    foreach ($name in $Profiles) {
        $wantedProfiles[$name] = [ordered]@{
            Enabled = $rendered.profiles.Enabled
            DefaultOutboundAction = $rendered.profiles.DefaultOutboundAction
            AllowLocalFirewallRules = $rendered.profiles.AllowLocalFirewallRules
        }
    }
    $profilesDiffer = ($beforeProfiles | ConvertTo-Json -Compress) -ne ($wantedProfiles | ConvertTo-Json -Compress)
    if ($profilesDiffer) {
        $changed = $true
        if ($null -eq $state.profiles) {
            $state.profiles = $beforeProfiles  # the originals, from before the first change only
        }
        if (-not $check) {
            Save-State -State $state
            Set-ProfileSetting -Setting $wantedProfiles
        }
    }

    $servers = @($rendered.dns.servers)
    $afterNrpt = @()
    if ($module.Params.configure_resolver -and $servers.Count -gt 0) {
        $afterNrpt = @('{0} -> {1}' -f $rendered.dns.namespace, ($servers -join ', '))
        $own = Get-OwnNrptRule
        $inSync = $own.Count -eq 1 -and $own[0].Namespace -eq $rendered.dns.namespace -and
        (@($own[0].NameServers) -join ',') -eq ($servers -join ',')
        if (-not $inSync) {
            $changed = $true
            if (-not $check) {
                foreach ($rule in $own) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
                Add-DnsClientNrptRule -Namespace $rendered.dns.namespace -NameServers $servers -Comment $Group
            }
        }
        $v4 = @($servers | Where-Object { $_ -notmatch ':' })
        $v6 = @($servers | Where-Object { $_ -match ':' })
        foreach ($alias in @(Resolve-Alias -Pattern @($rendered.tunnel_interfaces))) {
            $current = Get-InterfaceDns -Alias $alias
            if ((@($current.IPv4) -join ',') -ne ($v4 -join ',') -or (@($current.IPv6) -join ',') -ne ($v6 -join ',')) {
                $changed = $true
                if (-not $state.interface_dns.Contains($alias)) {
                    $state.interface_dns[$alias] = $current
                }
                if (-not $check) {
                    Save-State -State $state
                    Set-DnsClientServerAddress -InterfaceAlias $alias -ServerAddresses $servers
                }
            }
        }
    }
    elseif ((Get-OwnNrptRule).Count -gt 0) {
        $changed = $true
        if (-not $check) {
            foreach ($rule in Get-OwnNrptRule) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
        }
    }
    if ($changed -and -not $check) {
        Clear-DnsClientCache
    }
    $module.Result.rules = @($desired | ForEach-Object { $_['Name'] })
    $module.Result.added_rules = $ruleChange.added
    $module.Result.removed_rules = $ruleChange.removed
    $module.Diff.after = @{
        rules = @($desired | ForEach-Object { '{0} ({1})' -f $_['Name'], $_['DisplayName'] } | Sort-Object)
        profiles = $wantedProfiles
        nrpt = $afterNrpt
    }
}
else {
    $afterProfiles = [ordered]@{}
    foreach ($name in $Profiles) {
        $original = if ($state.profiles) { ConvertTo-Hashtable $state.profiles[$name] } else { $null }
        # Without the originals, NotConfigured: what an untouched local group policy has.
        $afterProfiles[$name] = if ($original -and $original.Count) { $original } else {
            [ordered]@{ Enabled = 'NotConfigured'; DefaultOutboundAction = 'NotConfigured'; AllowLocalFirewallRules = 'NotConfigured' }
        }
    }
    $ownsProfiles = $null -ne $state.profiles -or @($beforeProfiles.Values | Where-Object {
            $_.DefaultOutboundAction -eq 'Block' -and $_.AllowLocalFirewallRules -eq 'False' }).Count -gt 0
    $nrpt = Get-OwnNrptRule
    $changed = $beforeRules.Count -gt 0 -or $nrpt.Count -gt 0 -or $state.interface_dns.Count -gt 0 -or
    ($ownsProfiles -and ($beforeProfiles | ConvertTo-Json -Compress) -ne ($afterProfiles | ConvertTo-Json -Compress)) -or
    (Test-Path -LiteralPath $StatePath)
    if ($changed -and -not $check) {
        # Outbound back to what it was first, then our allows go.
        if ($ownsProfiles) {
            Set-ProfileSetting -Setting $afterProfiles
        }
        foreach ($rule in $beforeRules) { Remove-NetFirewallRule -PolicyStore $Store -Name $rule.Name }
        foreach ($rule in $nrpt) { Remove-DnsClientNrptRule -Name $rule.Name -Force }
        foreach ($alias in $state.interface_dns.Keys) {
            $original = ConvertTo-Hashtable $state.interface_dns[$alias]
            Set-InterfaceDns -Alias $alias -Servers (@($original.IPv4) + @($original.IPv6) | Where-Object { $_ })
        }
        Clear-DnsClientCache
        Remove-Item -LiteralPath $StatePath -Force -ErrorAction SilentlyContinue
    }
    $module.Result.rules = @()
    $module.Result.added_rules = @()
    $module.Result.removed_rules = @($beforeRules | ForEach-Object { $_.Name })
    $module.Diff.after = @{ rules = @(); profiles = $afterProfiles; nrpt = @() }
}

$module.Result.changed = $changed
$module.ExitJson()
