// Runs the Windows probe's own socket code (Host.Interfaces, ProbeVerdict.Plan, Host.Run, ProbeVerdict.Finish)
// on the host it runs on, with no net events (there is no WFP under mono), and prints "check=verdict|detail".
// test_win_wfp_probe_lab.py runs it inside a network namespace whose only way out leads to a namespace of its own.
using System;
using System.Collections;
using System.Collections.Generic;
using ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch;

public static class ProbeRun
{
    public static void Main(string[] args)
    {
        List<Hashtable> checks = ProbeVerdict.Plan(Host.Interfaces(), args[0].Split(','), true, args[1], args[2]);
        Host.Run(checks);
        foreach (Hashtable r in ProbeVerdict.Finish(checks, new ArrayList(), new Hashtable()))
            Console.WriteLine(r["check"] + "=" + r["verdict"] + "|" + r["detail"]);
    }
}
