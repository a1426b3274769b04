// Runs the evidence half of WfpKillSwitch.cs (counters, live probe verdicts, tunnel, routes, audit policy)
// on synthesised net events and recorded command output, and prints one "name=value" line per result
// for test_win_wfp_csharp.py. No socket is opened and no WFP call is made.
using System;
using System.Collections;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch;

public static class EvidenceProbe
{
    static Hashtable Map(params object[] pairs)
    {
        Hashtable h = new Hashtable();
        for (int i = 0; i < pairs.Length; i += 2) h[pairs[i]] = pairs[i + 1];
        return h;
    }

    // One FWPM_NET_EVENT2 in unmanaged memory, at the offsets fwpmtypes.h gives on x64.
    static IntPtr NetEvent(int type, bool v6, int protocol, byte[] local, byte[] remote, int localPort, int remotePort,
                           ulong filterId, string program)
    {
        IntPtr e = Marshal.AllocHGlobal(120);
        for (int i = 0; i < 120; i++) Marshal.WriteByte(e, i, 0);
        Marshal.WriteInt64(e, 0, new DateTime(2026, 12, 2, 6, 0, 0, DateTimeKind.Utc).ToFileTimeUtc());
        Marshal.WriteInt32(e, 8, 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | (program != null ? 0x20 : 0) | 0x100);
        Marshal.WriteInt32(e, 12, v6 ? 1 : 0);
        Marshal.WriteByte(e, 16, (byte)protocol);
        if (v6)
        {
            Marshal.Copy(local, 0, new IntPtr(e.ToInt64() + 20), 16);
            Marshal.Copy(remote, 0, new IntPtr(e.ToInt64() + 36), 16);
        }
        else
        {
            // UINT32 in host order: the first octet is the most significant byte.
            Marshal.WriteInt32(e, 20, (local[0] << 24) | (local[1] << 16) | (local[2] << 8) | local[3]);
            Marshal.WriteInt32(e, 36, (remote[0] << 24) | (remote[1] << 16) | (remote[2] << 8) | remote[3]);
        }
        Marshal.WriteInt16(e, 52, unchecked((short)localPort));
        Marshal.WriteInt16(e, 54, unchecked((short)remotePort));
        if (program != null)
        {
            IntPtr text = Marshal.StringToHGlobalUni(program);
            Marshal.WriteInt32(e, 64, (program.Length + 1) * 2);
            Marshal.WriteIntPtr(e, 72, text);
        }
        Marshal.WriteInt32(e, 104, type);
        IntPtr detail = Marshal.AllocHGlobal(40);
        for (int i = 0; i < 40; i++) Marshal.WriteByte(detail, i, 0);
        Marshal.WriteInt64(detail, 0, unchecked((long)filterId));
        Marshal.WriteInt16(detail, 8, 48);
        Marshal.WriteIntPtr(e, 112, detail);
        return e;
    }

    static string Show(Hashtable e)
    {
        if (e == null) return "null";
        List<string> keys = new List<string>();
        foreach (object k in e.Keys) keys.Add((string)k);
        keys.Sort(StringComparer.Ordinal);
        List<string> parts = new List<string>();
        foreach (string k in keys) parts.Add(k + ":" + e[k]);
        return string.Join(",", parts.ToArray());
    }

    static List<Hashtable> Csv(string path)
    {
        List<Hashtable> rows = new List<Hashtable>();
        string[] lines = File.ReadAllLines(path);
        string[] header = lines[0].Replace("\"", "").Split(',');
        for (int i = 1; i < lines.Length; i++)
        {
            if (lines[i].Trim().Length == 0) continue;
            string[] cells = lines[i].Replace("\"", "").Split(',');
            Hashtable row = new Hashtable();
            for (int c = 0; c < header.Length; c++) row[header[c]] = cells[c];
            rows.Add(row);
        }
        return rows;
    }

    public static void Main(string[] args)
    {
        string recorded = args[0];
        byte[] eth4 = { 198, 18, 1, 10 }, canary4 = { 203, 0, 113, 254 }, resolver = { 198, 18, 1, 1 };
        byte[] eth6 = new byte[16], canary6 = new byte[16];
        eth6[0] = 0x20; eth6[1] = 0x01; eth6[2] = 0x0d; eth6[3] = 0xb8; eth6[5] = 1; eth6[7] = 1; eth6[15] = 0x10;
        canary6[0] = 0x20; canary6[1] = 0x01; canary6[2] = 0x0d; canary6[3] = 0xb8; canary6[4] = 0xff; canary6[5] = 0xff; canary6[15] = 0xfe;

        Hashtable drop4 = NetEventReader.Read(NetEvent(3, false, 17, eth4, canary4, 50000, 9, 70001, "\\device\\harddiskvolume3\\tools\\probe.exe"));
        Hashtable drop6 = NetEventReader.Read(NetEvent(3, true, 6, eth6, canary6, 50001, 9, 70011, null));
        Hashtable allow = NetEventReader.Read(NetEvent(6, false, 6, eth4, canary4, 50002, 443, 70003, null));
        Console.WriteLine("event_drop_v4=" + Show(drop4));
        Console.WriteLine("event_drop_v6=" + Show(drop6));
        Console.WriteLine("event_allow=" + Show(allow));
        Console.WriteLine("event_ike_failure=" + Show(NetEventReader.Read(NetEvent(0, false, 17, eth4, canary4, 500, 500, 1, null))));

        // The counters, with the rules the renderer gives (win_wfp.counters) for a tunnel resolver 192.0.2.1,
        // an endpoint 203.0.113.1 udp 51820 kept for the VPN client, and one exception.
        Hashtable names = Map("70001", "vpnguard-killswitch-block-all-out-v4", "70011", "vpnguard-killswitch-block-all-out-v6",
            "70002", "vpnguard-killswitch-dns-block-v4", "70003", "vpnguard-killswitch-exception-0-v4",
            "70004", "vpnguard-killswitch-tunnel-out-v4");
        Hashtable rules = Map(
            "vpnguard-killswitch-block-all-out-v4", new ArrayList {
                Map("counter", "refused_endpoint", "remote", new[] { "203.0.113.1/32" }, "remote_port", 51820, "protocol", 17),
                Map("counter", "refused_out_v4") },
            "vpnguard-killswitch-block-all-out-v6", new ArrayList { Map("counter", "refused_out_v6") },
            "vpnguard-killswitch-dns-block-v4", new ArrayList {
                Map("counter", "refused_dns_outside", "remote", new[] { "192.0.2.1/32" }), Map("counter", "refused_dns_resolver") },
            "vpnguard-killswitch-exception-0-v4", new ArrayList { Map("counter", "exception_program_0cd9c065f6d4") });
        string[] counterNames = { "refused_out_v4", "refused_out_v6", "refused_dns_outside", "refused_dns_resolver",
                                  "refused_endpoint", "exception_program_0cd9c065f6d4" };
        List<Hashtable> events = new List<Hashtable> {
            drop4, drop6, allow,
            NetEventReader.Read(NetEvent(3, false, 17, eth4, new byte[] { 203, 0, 113, 1 }, 50003, 51820, 70001, null)),
            NetEventReader.Read(NetEvent(3, false, 17, eth4, new byte[] { 192, 0, 2, 1 }, 50004, 53, 70002, null)),
            NetEventReader.Read(NetEvent(3, false, 17, eth4, resolver, 50005, 53, 70002, null)),
            NetEventReader.Read(NetEvent(3, false, 17, eth4, resolver, 50006, 53, 70002, null)),
            NetEventReader.Read(NetEvent(3, false, 6, eth4, canary4, 50007, 80, 999, null)),  // another provider's
            NetEventReader.Read(NetEvent(6, false, 6, eth4, canary4, 50008, 443, 70004, null)),  // the tunnel: not counted
        };
        Hashtable totals = NetEvents.Tally(events, names, rules, Map("refused_out_v4", 40L, "gone_counter", 7), counterNames);
        List<string> shown = new List<string>();
        foreach (string n in counterNames) shown.Add(n + ":" + totals[n]);
        Console.WriteLine("tally=" + string.Join(",", shown.ToArray()));
        Console.WriteLine("tally_keeps_only_the_policys_counters=" + totals.ContainsKey("gone_counter"));

        // The probe's plan on a host with a wired uplink, a Wi-Fi that is down, the tunnel and loopback.
        ArrayList interfaces = new ArrayList {
            Map("alias", "Wi-Fi", "status", "Down", "loopback", false, "addresses", new string[0]),
            Map("alias", "Ethernet", "status", "Up", "loopback", false,
                "addresses", new[] { "fe80::1c2b:3a4d:5e6f:7081", "198.18.1.10", "2001:db8:1:1::10" }),
            Map("alias", "wg0", "status", "Up", "loopback", false, "addresses", new[] { "192.0.2.11" }),
            Map("alias", "Loopback Pseudo-Interface 1", "status", "Up", "loopback", true, "addresses", new[] { "127.0.0.1", "::1" }),
            Map("alias", "vEthernet (WSL)", "status", "Up", "loopback", false, "addresses", new[] { "169.254.10.1" }),
        };
        List<Hashtable> plan = ProbeVerdict.Plan(interfaces, new[] { "wg*" }, true, "203.0.113.254", "2001:db8:ffff::fe");
        List<string> planned = new List<string>();
        foreach (Hashtable c in plan)
            planned.Add(c["check"] + "|" + c["source"] + "|" + c["destination"] + ":" + c["port"] + "|" + (c["verdict"] ?? "run") + (c.ContainsKey("detail") ? "|" + c["detail"] : ""));
        Console.WriteLine("plan=" + string.Join(";", planned.ToArray()));
        List<Hashtable> anyResolver = ProbeVerdict.Plan(new ArrayList(), new[] { "wg*" }, false, "203.0.113.254", "2001:db8:ffff::fe");
        Console.WriteLine("plan_any_resolver=" + anyResolver[0]["verdict"] + "|" + anyResolver[0]["detail"]);

        // Verdicts: Winsock errors and net events as the host reports them.
        Func<string, int, bool, int, IEnumerable, string> judge = (kind, error, bindFailed, port, seen) =>
        {
            Hashtable c = Map("check", kind + " ipv4 bound to Ethernet", "interface", "Ethernet", "family", "ipv4",
                "protocol", kind == "tcp" ? "tcp" : "udp", "kind", kind, "source", "198.18.1.10",
                "destination", "203.0.113.254", "port", 9);
            ProbeVerdict.Judge(c, error, bindFailed, port, seen, names);
            return c["verdict"] + "|" + c["detail"];
        };
        // name, protocol, Winsock error, bind failed, local port (50000: the drop event of our filter, 50007: another
        // provider's, 50002: an allow event, 50099: no event).
        object[][] cases = {
            new object[] { "eacces_with_event", "udp", 10013, false, 50000 },
            new object[] { "eacces_without_event", "tcp", 10013, false, 50099 },
            new object[] { "sent_but_dropped", "udp", 0, false, 50000 },
            new object[] { "sent", "udp", 0, false, 50099 },
            new object[] { "connect_in_progress", "tcp", 10035, false, 50099 },
            new object[] { "other_providers_drop", "tcp", 0, false, 50007 },
            new object[] { "allow_event_is_no_drop", "tcp", 0, false, 50002 },
            new object[] { "no_route", "tcp", 10051, false, 50099 },
            new object[] { "bind_failed", "udp", 10049, true, 0 },
            new object[] { "connection_refused", "tcp", 10061, false, 50099 },
            new object[] { "host_unreachable", "tcp", 10065, false, 50099 },
            new object[] { "other_error", "udp", 10047, false, 50099 },
        };
        foreach (object[] c in cases)
            Console.WriteLine("judge_" + c[0] + "=" + judge((string)c[1], (int)c[2], (bool)c[3], (int)c[4], events));

        Hashtable tunnel = ProbeVerdict.Tunnel(interfaces, new[] { "wg*" });
        Console.WriteLine("tunnel=" + tunnel["up"] + "|" + Show((Hashtable)((Hashtable[])tunnel["interfaces"])[0]).Replace("System.String[]", string.Join(" ", (string[])((Hashtable[])tunnel["interfaces"])[0]["addresses"])));
        Hashtable down = ProbeVerdict.Tunnel(new ArrayList { Map("alias", "wg0", "status", "Down", "addresses", new string[0]) }, new[] { "wg*" });
        Console.WriteLine("tunnel_down=" + down["up"]);

        List<string> routes = ProbeVerdict.RoutesOutsideTunnel(Csv(Path.Combine(recorded, "get-netroute.csv")), new[] { "wg*" });
        Console.WriteLine("routes_outside_tunnel=" + string.Join(";", routes.ToArray()));

        // The audit policy, as AuditQuerySystemPolicy returns it: AUDIT_POLICY_INFORMATION entries one after the
        // other, laid out here at the documented offsets (subcategory GUID 0, AuditingInformation 16, category GUID
        // 20; 36 bytes), not through the struct the reader uses. Packet Drop reads 0 (no auditing, as a query may
        // give it), Connection POLICY_AUDIT_EVENT_SUCCESS: the admin's.
        Console.WriteLine("audit_layout=" + Marshal.SizeOf(typeof(AuditPolicyInformation)) + "," +
            Marshal.OffsetOf(typeof(AuditPolicyInformation), "AuditingInformation") + "," +
            Marshal.OffsetOf(typeof(AuditPolicyInformation), "AuditCategoryGuid"));
        IntPtr answer = AuditAnswer(new[] { AuditPolicy.PacketDrop, AuditPolicy.Connection }, new uint[] { 0, 1 });
        Hashtable audit = SystemAuditPolicy.Read(answer, AuditPolicy.Subcategories);
        Console.WriteLine("audit_read=" + audit[AuditPolicy.PacketDrop] + "|" + audit[AuditPolicy.Connection]);
        Hashtable throughPointers = SystemAuditPolicy.Read(AuditAnswerThroughPointers(
            new[] { AuditPolicy.PacketDrop, AuditPolicy.Connection }, new uint[] { 2, 3 }), AuditPolicy.Subcategories);
        Console.WriteLine("audit_read_through_pointers=" + throughPointers[AuditPolicy.PacketDrop] + "|" + throughPointers[AuditPolicy.Connection]);
        try
        {
            SystemAuditPolicy.Read(AuditAnswer(new[] { AuditPolicy.Connection, AuditPolicy.PacketDrop }, new uint[] { 1, 0 }),
                AuditPolicy.Subcategories);
            Console.WriteLine("audit_read_other_layout=read");
        }
        catch (InvalidOperationException e)
        {
            Console.WriteLine("audit_read_other_layout=refused|" + e.Message);
        }
        foreach (string level in new[] { "none", "exceptions", "refused", "all" })
            Console.WriteLine("audit_plan_" + level + "=" + Steps(AuditPolicy.Plan(level, audit, null)));
        // After refused was applied, back to none: the settings saved before the first change come back.
        Hashtable applied = Map(AuditPolicy.PacketDrop, AuditPolicy.EventFailure, AuditPolicy.Connection, 3u);
        Console.WriteLine("audit_plan_back_to_none=" + Steps(AuditPolicy.Plan("none", applied, audit)));
        Console.WriteLine("audit_plan_refused_again=" + Steps(AuditPolicy.Plan("refused", applied, audit)));
        Console.WriteLine("audit_restore=" + Steps(AuditPolicy.Restore(audit)));
        // Each call to AuditSetSystemPolicy: Success and Failure back to Success is cleared first, then set.
        Console.WriteLine("audit_set_steps_back_to_none=" + SetSteps(applied, AuditPolicy.Plan("none", applied, audit)));
        Console.WriteLine("audit_set_steps_all=" + SetSteps(audit, AuditPolicy.Plan("all", audit, null)));

        // Saved by this version: flags, boxed however the state file's JSON gives them back.
        Hashtable savedAsJson = Map(AuditPolicy.PacketDrop, 0L, AuditPolicy.Connection, "1");
        Console.WriteLine("audit_plan_back_to_none_from_json=" + Steps(AuditPolicy.Plan("none", applied, savedAsJson)));
        // Saved by an earlier release: auditpol's English Inclusion Setting.
        foreach (string text in new[] { "No Auditing", "Success", "Failure", "Success and Failure", "success and failure " })
            Console.WriteLine("audit_saved_legacy_" + text.Trim().Replace(' ', '_') + "=" + Shown(AuditPolicy.Saved(text)));
        Hashtable legacy = Map(AuditPolicy.PacketDrop, "No Auditing", AuditPolicy.Connection, "Success");
        Console.WriteLine("audit_plan_back_to_none_legacy=" + Steps(AuditPolicy.Plan("none", applied, legacy)));
        Console.WriteLine("audit_restore_legacy=" + Steps(AuditPolicy.Restore(legacy)));
        // What an earlier release could have saved on a host whose display language is not English: the localized
        // Inclusion Setting (German and French words for illustration, not a capture), or nothing at all where the
        // column names were localized too. Neither says what the admin had.
        Hashtable localized = Map(AuditPolicy.PacketDrop, "Erfolg und Fehler", AuditPolicy.Connection, "Succès et échec");
        Console.WriteLine("audit_saved_localized=" + Shown(AuditPolicy.Saved("Erfolg und Fehler")) + "|" + Shown(AuditPolicy.Saved("Pas d'audit")));
        Console.WriteLine("audit_plan_back_to_none_localized=" + Steps(AuditPolicy.Plan("none", applied, localized)));
        Console.WriteLine("audit_restore_localized=" + Steps(AuditPolicy.Restore(localized)));
        Console.WriteLine("audit_unreadable_localized=" + string.Join(";", AuditPolicy.Unreadable(localized)));
        Console.WriteLine("audit_restore_nothing_saved=" + Steps(AuditPolicy.Restore(new Hashtable())) + "|" +
            string.Join(";", AuditPolicy.Unreadable(new Hashtable())));
        Console.WriteLine("audit_unreadable_saved=" + AuditPolicy.Unreadable(audit).Length + "," + AuditPolicy.Unreadable(legacy).Length);

        Console.WriteLine("audit_flags=" + AuditPolicy.Flags(new[] { false, false }) + "," + AuditPolicy.Flags(new[] { true, false }) + "," +
            AuditPolicy.Flags(new[] { false, true }) + "," + AuditPolicy.Flags(new[] { true, true }));
        Console.WriteLine("audit_bools=" + Shown(AuditPolicy.Bools(0)) + "|" + Shown(AuditPolicy.Bools(AuditPolicy.EventNone)) + "|" +
            Shown(AuditPolicy.Bools(3)));
        Console.WriteLine("audit_denied=" + AuditPolicy.Failure("AuditSetSystemPolicy", 5).Message);
        Console.WriteLine("audit_not_held=" + AuditPolicy.Failure("AuditQuerySystemPolicy", 1314).Message);
        Console.WriteLine("audit_invalid=" + AuditPolicy.Failure("AuditSetSystemPolicy", 87).Message);

        Hashtable t = EngineOptions.Targets(1, 0, null, true);
        Console.WriteLine("options_exceptions=" + t["collect"] + "," + t["keywords"] + "|" + string.Join(";", (string[])t["drift"]));
        t = EngineOptions.Targets(0, 0x3, Map("collect", 1, "keywords", 0x1), false);
        Console.WriteLine("options_no_exceptions=" + t["collect"] + "," + t["keywords"] + "|" + string.Join(";", (string[])t["drift"]));
        t = EngineOptions.Targets(1, 0x11, Map("collect", 1, "keywords", 0x1), false);
        Console.WriteLine("options_exceptions_gone=" + t["collect"] + "," + t["keywords"] + "|" + string.Join(";", (string[])t["drift"]));

        // Finish: what Host.Run leaves on each check, judged and shaped as the module returns it.
        List<Hashtable> ran = ProbeVerdict.Plan(interfaces, new[] { "wg*" }, true, "203.0.113.254", "2001:db8:ffff::fe");
        foreach (Hashtable c in ran)
        {
            if (c.ContainsKey("verdict")) continue;
            c["error"] = c["protocol"].Equals("tcp") ? 10013 : 0;
            c["bind_failed"] = false;
            c["local_port"] = c["family"].Equals("ipv4") && c["protocol"].Equals("udp") && c["interface"].Equals("Ethernet") && (int)c["port"] == 9 ? 50000 : 51000;
        }
        List<string> finished = new List<string>();
        foreach (Hashtable r in ProbeVerdict.Finish(ran, events, names))
            if (!r["verdict"].Equals("not run")) finished.Add(r["check"] + "|" + r["verdict"] + "|" + r.Count);
        Console.WriteLine("finish=" + string.Join(";", finished.ToArray()));
    }

    // An AuditQuerySystemPolicy answer: one AUDIT_POLICY_INFORMATION per subcategory, at the documented offsets.
    static IntPtr AuditAnswer(string[] subcategories, uint[] flags)
    {
        IntPtr buffer = Marshal.AllocHGlobal(36 * subcategories.Length);
        for (int i = 0; i < subcategories.Length; i++)
        {
            Marshal.Copy(new Guid(subcategories[i]).ToByteArray(), 0, new IntPtr(buffer.ToInt64() + 36 * i), 16);
            Marshal.WriteInt32(buffer, 36 * i + 16, (int)flags[i]);
            // The category GUID (Object Access) is not read.
            Marshal.Copy(new Guid("6997984a-797a-11d9-bed3-505054503030").ToByteArray(), 0, new IntPtr(buffer.ToInt64() + 36 * i + 20), 16);
        }
        return buffer;
    }

    // The same entries as the documentation words it: an array of pointers to the structures, then the structures.
    static IntPtr AuditAnswerThroughPointers(string[] subcategories, uint[] flags)
    {
        int pointers = IntPtr.Size * subcategories.Length, size = 36 * subcategories.Length;
        IntPtr entries = AuditAnswer(subcategories, flags);
        IntPtr buffer = Marshal.AllocHGlobal(pointers + size);
        byte[] copy = new byte[size];
        Marshal.Copy(entries, copy, 0, size);
        Marshal.Copy(copy, 0, new IntPtr(buffer.ToInt64() + pointers), size);
        for (int i = 0; i < subcategories.Length; i++)
            Marshal.WriteIntPtr(buffer, i * IntPtr.Size, new IntPtr(buffer.ToInt64() + pointers + 36 * i));
        return buffer;
    }

    static string Shown(bool[] auditing)
    {
        return auditing == null ? "unknown" : auditing[0] + "," + auditing[1];
    }

    // The AuditSetSystemPolicy entries a plan asks for, in order: GUID:flags (described).
    static string SetSteps(Hashtable current, Hashtable plan)
    {
        List<string> calls = new List<string>();
        foreach (Hashtable step in AuditPolicy.SetSteps(current, plan)) calls.Add(Steps(step));
        return string.Join(" then ", calls.ToArray());
    }

    static string Steps(Hashtable plan)
    {
        List<string> steps = new List<string>();
        foreach (string guid in AuditPolicy.Subcategories)
            if (plan.ContainsKey(guid)) steps.Add(guid + ":" + plan[guid] + " (" + Described((uint)plan[guid]) + ")");
        return string.Join(";", steps.ToArray());
    }

    // Flags in words, as the assertions read them.
    static string Described(uint flags)
    {
        bool[] b = AuditPolicy.Bools(flags);
        return b[0] && b[1] ? "success and failure" : b[0] ? "success" : b[1] ? "failure" : "no auditing";
    }
}
