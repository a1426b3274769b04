// Runs the host-side decisions of WfpKillSwitch.cs (no WFP call) and prints
// each result as one line "name=value", for test_win_wfp_csharp.py.
using System;
using System.Collections;
using System.Collections.Generic;
using ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch;

public static class Probe
{
    static string Luids(Dictionary<string, List<ulong>> bound)
    {
        List<string> parts = new List<string>();
        List<string> keys = new List<string>(bound.Keys);
        keys.Sort(StringComparer.Ordinal);
        foreach (string k in keys)
        {
            List<string> luids = new List<string>();
            foreach (ulong l in bound[k]) luids.Add(l.ToString());
            parts.Add(k + ":" + string.Join(",", luids.ToArray()));
        }
        return string.Join(";", parts.ToArray());
    }

    static Hashtable Map(params object[] pairs)
    {
        Hashtable h = new Hashtable();
        for (int i = 0; i < pairs.Length; i += 2) h[pairs[i]] = pairs[i + 1];
        return h;
    }

    public static void Main()
    {
        Hashtable present = Map("Ethernet", 5UL, "wg0", 7UL, "OpenVPN TAP-Windows6", 11UL);
        Console.WriteLine("bind_present=" + Luids(TunnelBinding.Bind(new[] { "wg0", "openvpn*", "Wintun*" }, present, null)));
        // The tunnel is down during the run: its LUID from the last run is kept.
        Console.WriteLine("bind_down=" + Luids(TunnelBinding.Bind(new[] { "wg0" }, Map("Ethernet", 5UL),
            Map("wg0", new ulong[] { 7 }))));
        // A pattern that never matched must not leave an empty (match-everything) condition.
        Console.WriteLine("bind_never=" + Luids(TunnelBinding.Bind(new[] { "wg0" }, Map("Ethernet", 5UL), null)));
        Console.WriteLine("bind_star_is_prefix_only=" + TunnelBinding.AliasMatches("wg*", "Ethernet") + "," +
            TunnelBinding.AliasMatches("wg*", "WG1"));
        Console.WriteLine("unbind=" + string.Join(",", Engine.Unbind(new List<ulong> { 7, 9 },
            Map("wg0", new ulong[] { 7 }, "tun*", new ulong[] { 8 })).ToArray()));
        Hashtable saved = Map(
            "{6B29FC40-CA47-1067-B31D-00DD010662DA}", Map("alias", "wg0", "static", new string[0]),
            "7c9e6679-7425-40de-944b-e07fc1f90ae7", Map("alias", "tun1", "static", new[] { "192.0.2.53", "2001:db8::53" }),
            "{0F8FAD5B-D9CB-469F-A165-70867728950E}", Map("alias", "gone", "static", new[] { "198.51.100.1" }));
        List<string> plan = new List<string>();
        foreach (Hashtable a in DnsRollback.Plan(saved, new[] { "{6b29fc40-ca47-1067-b31d-00dd010662da}", "{7C9E6679-7425-40DE-944B-E07FC1F90AE7}" }))
            plan.Add(a["alias"] + ":" + a["action"] + ":" + string.Join(" ", (string[])a["servers"]));
        Console.WriteLine("rollback=" + string.Join(";", plan.ToArray()));
        // LUIDs as JSON parsers and PowerShell box them: int, long, decimal, text.
        Console.WriteLine("bind_boxed=" + Luids(TunnelBinding.Bind(new object[] { "wg0", "tun0", "tap0", "wg1" },
            Map("wg0", 7, "tun0", 8L, "tap0", 9m, "wg1", "10"), null)));
        Console.WriteLine("ipv6_text=" + Engine.Ipv6Text(new byte[] { 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0 }));
    }
}
