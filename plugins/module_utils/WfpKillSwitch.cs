// Copyright: (c) 2026, vpnguard maintainers
// GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

// The native half of win_wfp_killswitch: turns the filter set rendered on the
// controller (module_utils/win_wfp.py) into WFP objects in one BFE
// transaction, reads them back, and holds the pure decisions the module makes
// on the host (tunnel binding, DNS rollback), which the unit tests run under
// mono. Written for C# 5 (Windows PowerShell's compiler); x64 and arm64
// layouts only (every structure offset below is the 64-bit one).

using System;
using System.Collections;
using System.Collections.Generic;
using System.ComponentModel;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;

namespace ansible_collections.vpnguard.killswitch.plugins.module_utils.WfpKillSwitch
{
    /// <summary>The names the renderer uses, and the WFP identifiers behind them (fwpmu.h, fwptypes.h).</summary>
    public static class Names
    {
        public static readonly Dictionary<string, Guid> Layers = new Dictionary<string, Guid>
        {
            { "ALE_AUTH_CONNECT_V4", new Guid("c38d57d1-05a7-4c33-904f-7fbceee60e82") },
            { "ALE_AUTH_CONNECT_V6", new Guid("4a72393b-319f-44bc-84c3-ba54dcb3b6b4") },
            { "ALE_AUTH_RECV_ACCEPT_V4", new Guid("e1cd9fe7-f4b5-4273-96c0-592e487b8650") },
            { "ALE_AUTH_RECV_ACCEPT_V6", new Guid("a3b42c97-9f04-4672-b87e-cee9c483257f") },
            { "IPFORWARD_V4", new Guid("a82acc24-4ee1-4ee1-b465-fd1d25cb10a4") },
            { "IPFORWARD_V6", new Guid("7b964818-19c7-493a-b71f-832c3684d28c") },
        };

        public static readonly Dictionary<string, Guid> Fields = new Dictionary<string, Guid>
        {
            { "IP_REMOTE_ADDRESS", new Guid("b235ae9a-1d64-49b8-a44c-5ff3d9095045") },
            { "IP_REMOTE_PORT", new Guid("c35a604d-d22b-4e1a-91b4-68f674ee674b") },
            // FWPM_CONDITION_ICMP_TYPE is FWPM_CONDITION_IP_LOCAL_PORT (fwpmu.h).
            { "IP_LOCAL_PORT", new Guid("0c1ba1af-5765-453f-af22-a8f791ac775b") },
            { "ICMP_TYPE", new Guid("0c1ba1af-5765-453f-af22-a8f791ac775b") },
            { "IP_PROTOCOL", new Guid("3971ef2b-623e-4f9a-8cb1-6e79b806b9a7") },
            { "IP_LOCAL_INTERFACE", new Guid("4cd62a49-59c3-4969-b7f3-bda5d32890a4") },
            { "IP_FORWARD_INTERFACE", new Guid("1076b8a5-6323-4c5e-9810-e8d3fc9e6136") },
            { "ALE_APP_ID", new Guid("d78e1e87-8644-4ea5-9437-d809ecefc971") },
            { "FLAGS", new Guid("632ce23b-5167-435c-86d7-e903684aa80c") },
        };

        public static readonly Guid UniversalSublayer = new Guid("eebecc03-ced4-4380-819a-2734397b2b74");

        public const uint FilterPersistent = 0x1, FilterBoottime = 0x2, FilterClearActionRight = 0x8;
        public const uint ObjectPersistent = 0x1;  // FWPM_PROVIDER_FLAG_PERSISTENT, FWPM_SUBLAYER_FLAG_PERSISTENT
        public const uint ActionBlock = 0x1001, ActionPermit = 0x1002;
        public const uint MatchEqual = 0, MatchFlagsAllSet = 6;
        public const uint ConditionFlagIsLoopback = 0x1;
        public const int TypeEmpty = 0, TypeUint8 = 1, TypeUint16 = 2, TypeUint32 = 3, TypeUint64 = 4,
            TypeByteBlob = 12, TypeV4AddrMask = 0x100, TypeV6AddrMask = 0x101;

        public static uint Flags(IEnumerable names)
        {
            uint flags = 0;
            foreach (object name in names)
            {
                switch (Values.Str(name))
                {
                    case "PERSISTENT": flags |= FilterPersistent; break;
                    case "BOOTTIME": flags |= FilterBoottime; break;
                    case "CLEAR_ACTION_RIGHT": flags |= FilterClearActionRight; break;
                    default: throw new ArgumentException("unknown filter flag " + name);
                }
            }
            return flags;
        }

        public static List<string> FlagNames(uint flags)
        {
            List<string> names = new List<string>();
            if ((flags & FilterBoottime) != 0) names.Add("BOOTTIME");
            if ((flags & FilterClearActionRight) != 0) names.Add("CLEAR_ACTION_RIGHT");
            if ((flags & FilterPersistent) != 0) names.Add("PERSISTENT");
            return names;
        }

        public static string NameOf(Dictionary<string, Guid> map, Guid key)
        {
            foreach (KeyValuePair<string, Guid> pair in map)
                if (pair.Value == key && pair.Key != "ICMP_TYPE") return pair.Key;
            return null;
        }
    }

    /// <summary>
    /// Values as they arrive from PowerShell or a JSON parser (boxed numbers of any width, strings, or
    /// either wrapped): read through their text, so that no cast depends on how they were boxed.
    /// </summary>
    public static class Values
    {
        public static string Str(object value)
        {
            return value == null ? null : value.ToString();
        }

        public static ulong U64(object value)
        {
            return ulong.Parse(value.ToString(), NumberStyles.Integer, CultureInfo.InvariantCulture);
        }
    }

    /// <summary>Binds the tunnel's alias patterns to interface LUIDs, the only way WFP names an interface.</summary>
    public static class TunnelBinding
    {
        /// <summary>A trailing "*" is a prefix wildcard; Windows compares aliases without regard to case.</summary>
        public static bool AliasMatches(string pattern, string alias)
        {
            if (pattern.EndsWith("*"))
                return alias.StartsWith(pattern.Substring(0, pattern.Length - 1), StringComparison.OrdinalIgnoreCase);
            return string.Equals(pattern, alias, StringComparison.OrdinalIgnoreCase);
        }

        /// <summary>
        /// pattern -> LUIDs: the adapters present now that match, plus every LUID the pattern was bound to
        /// before. A tunnel that is down when the module runs keeps its permits: WireGuard and Wintun
        /// re-create an adapter with the same GUID, hence the same LUID, and until it is back the LUID
        /// matches nothing. A pattern that never matched binds to LUID 0, which no interface has: an
        /// interface condition without values would match every interface.
        /// </summary>
        public static Dictionary<string, List<ulong>> Bind(IEnumerable patterns, IDictionary present, IDictionary previous)
        {
            Dictionary<string, List<ulong>> bound = new Dictionary<string, List<ulong>>();
            foreach (object p in patterns)
            {
                string pattern = Values.Str(p);
                SortedSet<ulong> luids = new SortedSet<ulong>();
                foreach (DictionaryEntry adapter in present)
                    if (AliasMatches(pattern, Values.Str(adapter.Key))) luids.Add(Values.U64(adapter.Value));
                if (previous != null && previous.Contains(pattern))
                    foreach (object luid in (IEnumerable)previous[pattern]) luids.Add(Values.U64(luid));
                luids.Remove(0);
                if (luids.Count == 0) luids.Add(0);
                bound[pattern] = new List<ulong>(luids);
            }
            return bound;
        }
    }

    /// <summary>What state: absent does to each tunnel adapter's DNS servers, keyed by adapter GUID.</summary>
    public static class DnsRollback
    {
        /// <summary>
        /// saved: GUID -> {alias, static (the servers set by hand before us; empty when they came from
        /// DHCP or router advertisements)}. present: GUIDs of the adapters there now.
        /// Returns one action per saved adapter: "reset" (back to automatic, as DHCP had it), "set"
        /// (the static servers) or "skip" (the adapter is gone; nothing to restore, and nothing to fail on).
        /// </summary>
        public static List<Hashtable> Plan(IDictionary saved, ICollection present)
        {
            HashSet<string> here = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
            foreach (object guid in present) here.Add(NormalGuid(Values.Str(guid)));
            List<string> keys = new List<string>();
            foreach (object key in saved.Keys) keys.Add(Values.Str(key));
            keys.Sort(StringComparer.Ordinal);
            List<Hashtable> plan = new List<Hashtable>();
            foreach (string key in keys)
            {
                IDictionary entry = (IDictionary)saved[key];
                List<string> servers = new List<string>();
                if (entry.Contains("static") && entry["static"] != null)
                    foreach (object s in (IEnumerable)entry["static"]) servers.Add(Values.Str(s));
                Hashtable action = new Hashtable();
                action["guid"] = NormalGuid(key);
                action["alias"] = entry.Contains("alias") ? entry["alias"] : null;
                action["servers"] = servers.ToArray();
                action["action"] = !here.Contains(NormalGuid(key)) ? "skip" : servers.Count == 0 ? "reset" : "set";
                plan.Add(action);
            }
            return plan;
        }

        public static string NormalGuid(string guid)
        {
            return new Guid(guid).ToString("B").ToUpperInvariant();
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct FwpmDisplayData
    {
        public IntPtr Name;
        public IntPtr Description;
    }

    [StructLayout(LayoutKind.Explicit, Size = 16)]
    internal struct FwpValue
    {
        [FieldOffset(0)] public int Type;
        [FieldOffset(8)] public ulong Value;  // the scalar, or a pointer to it
    }

    [StructLayout(LayoutKind.Explicit, Size = 40)]
    internal struct FwpmFilterCondition
    {
        [FieldOffset(0)] public Guid FieldKey;
        [FieldOffset(16)] public uint MatchType;
        [FieldOffset(24)] public FwpValue Value;
    }

    [StructLayout(LayoutKind.Explicit, Size = 200)]
    internal struct FwpmFilter
    {
        [FieldOffset(0)] public Guid FilterKey;
        [FieldOffset(16)] public FwpmDisplayData Display;
        [FieldOffset(32)] public uint Flags;
        [FieldOffset(40)] public IntPtr ProviderKey;
        [FieldOffset(48)] public uint ProviderDataSize;
        [FieldOffset(56)] public IntPtr ProviderData;
        [FieldOffset(64)] public Guid LayerKey;
        [FieldOffset(80)] public Guid SubLayerKey;
        [FieldOffset(96)] public FwpValue Weight;
        [FieldOffset(112)] public uint NumFilterConditions;
        [FieldOffset(120)] public IntPtr FilterCondition;
        [FieldOffset(128)] public uint ActionType;
        [FieldOffset(132)] public Guid ActionFilterType;
        [FieldOffset(152)] public ulong RawContext;
        [FieldOffset(168)] public IntPtr Reserved;
        [FieldOffset(176)] public ulong FilterId;
        [FieldOffset(184)] public FwpValue EffectiveWeight;
    }

    [StructLayout(LayoutKind.Explicit, Size = 72)]
    internal struct FwpmSubLayer
    {
        [FieldOffset(0)] public Guid SubLayerKey;
        [FieldOffset(16)] public FwpmDisplayData Display;
        [FieldOffset(32)] public uint Flags;
        [FieldOffset(40)] public IntPtr ProviderKey;
        [FieldOffset(48)] public uint ProviderDataSize;
        [FieldOffset(56)] public IntPtr ProviderData;
        [FieldOffset(64)] public ushort Weight;
    }

    [StructLayout(LayoutKind.Explicit, Size = 64)]
    internal struct FwpmProvider
    {
        [FieldOffset(0)] public Guid ProviderKey;
        [FieldOffset(16)] public FwpmDisplayData Display;
        [FieldOffset(32)] public uint Flags;
        [FieldOffset(40)] public uint ProviderDataSize;
        [FieldOffset(48)] public IntPtr ProviderData;
        [FieldOffset(56)] public IntPtr ServiceName;
    }

    [StructLayout(LayoutKind.Explicit, Size = 72)]
    internal struct FwpmFilterEnumTemplate
    {
        [FieldOffset(0)] public IntPtr ProviderKey;
        [FieldOffset(8)] public Guid LayerKey;
        [FieldOffset(24)] public uint EnumType;
        [FieldOffset(28)] public uint Flags;
        [FieldOffset(32)] public IntPtr ProviderContextTemplate;
        [FieldOffset(40)] public uint NumFilterConditions;
        [FieldOffset(48)] public IntPtr FilterCondition;
        [FieldOffset(56)] public uint ActionMask;
        [FieldOffset(64)] public IntPtr CalloutKey;
    }

    /// <summary>FWPM_NET_EVENT_ENUM_TEMPLATE0: the time window (FILETIME, UTC) and no conditions.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 32)]
    internal struct FwpmNetEventEnumTemplate
    {
        [FieldOffset(0)] public long StartTime;
        [FieldOffset(8)] public long EndTime;
        [FieldOffset(16)] public uint NumFilterConditions;
        [FieldOffset(24)] public IntPtr FilterCondition;
    }

    internal static class Native
    {
        public const uint RpcCAuthnWinNT = 10;
        public const uint FwpEAlreadyExists = 0x80320009, FwpEFilterNotFound = 0x80320003,
            FwpEProviderNotFound = 0x80320005, FwpESublayerNotFound = 0x80320007;
        public const uint EnumOverlapping = 1, EnumFlagIncludeBoottime = 8;

        [DllImport("fwpuclnt.dll")] public static extern uint FwpmEngineOpen0(IntPtr server, uint authn, IntPtr identity, IntPtr session, out IntPtr engine);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmEngineClose0(IntPtr engine);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmTransactionBegin0(IntPtr engine, uint flags);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmTransactionCommit0(IntPtr engine);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmTransactionAbort0(IntPtr engine);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmProviderAdd0(IntPtr engine, ref FwpmProvider provider, IntPtr sd);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmProviderGetByKey0(IntPtr engine, ref Guid key, out IntPtr provider);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmProviderDeleteByKey0(IntPtr engine, ref Guid key);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmSubLayerAdd0(IntPtr engine, ref FwpmSubLayer sublayer, IntPtr sd);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmSubLayerGetByKey0(IntPtr engine, ref Guid key, out IntPtr sublayer);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmSubLayerDeleteByKey0(IntPtr engine, ref Guid key);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmFilterAdd0(IntPtr engine, ref FwpmFilter filter, IntPtr sd, out ulong id);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmFilterDeleteByKey0(IntPtr engine, ref Guid key);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmFilterCreateEnumHandle0(IntPtr engine, ref FwpmFilterEnumTemplate template, out IntPtr handle);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmFilterEnum0(IntPtr engine, IntPtr handle, uint requested, out IntPtr entries, out uint returned);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmFilterDestroyEnumHandle0(IntPtr engine, IntPtr handle);
        [DllImport("fwpuclnt.dll")] public static extern void FwpmFreeMemory0(ref IntPtr p);
        [DllImport("fwpuclnt.dll", CharSet = CharSet.Unicode)] public static extern uint FwpmGetAppIdFromFileName0(string fileName, out IntPtr appId);
        [DllImport("iphlpapi.dll")] public static extern uint ConvertInterfaceGuidToLuid(ref Guid guid, out ulong luid);
        // Net events (fwpmu.h): FwpmNetEventEnum2 returns FWPM_NET_EVENT2, the first version with CLASSIFY_ALLOW (Windows 8).
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmNetEventCreateEnumHandle0(IntPtr engine, ref FwpmNetEventEnumTemplate template, out IntPtr handle);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmNetEventEnum2(IntPtr engine, IntPtr handle, uint requested, out IntPtr entries, out uint returned);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmNetEventDestroyEnumHandle0(IntPtr engine, IntPtr handle);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmEngineGetOption0(IntPtr engine, uint option, out IntPtr value);
        [DllImport("fwpuclnt.dll")] public static extern uint FwpmEngineSetOption0(IntPtr engine, uint option, ref FwpValue value);

        public static void Check(uint status, string what)
        {
            if (status != 0)
                throw new Win32Exception(unchecked((int)status), string.Format("{0} failed: 0x{1:X8}", what, status));
        }
    }

    /// <summary>One session with the Base Filtering Engine; every change goes through one transaction.</summary>
    public sealed class Engine : IDisposable
    {
        private IntPtr handle;
        private readonly List<IntPtr> allocated = new List<IntPtr>();
        private readonly List<IntPtr> enumerated = new List<IntPtr>();
        private readonly Guid providerKey;
        private readonly Guid sublayerKey;

        public Engine(string providerKey, string sublayerKey)
        {
            this.providerKey = new Guid(providerKey);
            this.sublayerKey = new Guid(sublayerKey);
            Native.Check(Native.FwpmEngineOpen0(IntPtr.Zero, Native.RpcCAuthnWinNT, IntPtr.Zero, IntPtr.Zero, out handle),
                "FwpmEngineOpen0 (is the Base Filtering Engine running?)");
        }

        public void Dispose()
        {
            if (handle != IntPtr.Zero)
            {
                Native.FwpmEngineClose0(handle);
                handle = IntPtr.Zero;
            }
            FreeAll();
        }

        /// <summary>LUID of every adapter, by alias; adapters come and go, so this is read at every run.</summary>
        public static Hashtable AdapterLuids()
        {
            Hashtable luids = new Hashtable(StringComparer.OrdinalIgnoreCase);
            foreach (System.Net.NetworkInformation.NetworkInterface nic in
                     System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces())
            {
                Guid guid;
                ulong luid;
                if (Guid.TryParse(nic.Id, out guid) && Native.ConvertInterfaceGuidToLuid(ref guid, out luid) == 0)
                    luids[nic.Name] = luid;
            }
            return luids;
        }

        /// <summary>Run-time filter id -> name of each of our filters: what a net event names its filter by.</summary>
        public Hashtable FilterIds()
        {
            Hashtable ids = new Hashtable();
            try
            {
                foreach (string layer in Names.Layers.Keys)
                    foreach (FwpmFilter f in Enumerate(Names.Layers[layer]))
                        if (IsOurs(f)) ids[f.FilterId.ToString(CultureInfo.InvariantCulture)] = Marshal.PtrToStringUni(f.Display.Name);
            }
            finally
            {
                FreeAll();
            }
            return ids;
        }

        /// <summary>FWPM_ENGINE_OPTION values (fwpmtypes.h): COLLECT_NET_EVENTS = 0, NET_EVENT_MATCH_ANY_KEYWORDS = 1.</summary>
        public const uint OptionCollectNetEvents = 0, OptionNetEventKeywords = 1;

        public uint GetOption(uint option)
        {
            IntPtr value;
            Native.Check(Native.FwpmEngineGetOption0(handle, option, out value), "FwpmEngineGetOption0");
            try
            {
                return (uint)((FwpValue)Marshal.PtrToStructure(value, typeof(FwpValue))).Value;
            }
            finally
            {
                Native.FwpmFreeMemory0(ref value);
            }
        }

        public void SetOption(uint option, uint newValue)
        {
            FwpValue value = new FwpValue();
            value.Type = Names.TypeUint32;
            value.Value = newValue;
            Native.Check(Native.FwpmEngineSetOption0(handle, option, ref value), "FwpmEngineSetOption0");
        }

        /// <summary>
        /// The CLASSIFY_DROP and CLASSIFY_ALLOW net events between two times (UTC), in NetEvents.Tally's shape:
        /// type, filter_id, layer_id, protocol, local and remote address and port, time. The BFE keeps them in a
        /// bounded buffer, so what was overwritten before this read is not there (NetEvents.Tally's caveat).
        /// </summary>
        public List<Hashtable> NetEvents(DateTime fromUtc, DateTime toUtc)
        {
            FwpmNetEventEnumTemplate template = new FwpmNetEventEnumTemplate();
            template.StartTime = fromUtc.ToFileTimeUtc();
            template.EndTime = toUtc.ToFileTimeUtc();
            IntPtr enumHandle;
            Native.Check(Native.FwpmNetEventCreateEnumHandle0(handle, ref template, out enumHandle), "FwpmNetEventCreateEnumHandle0");
            List<Hashtable> events = new List<Hashtable>();
            // Each event is read into a Hashtable before its page is freed.
            ReadPages(enumHandle, Native.FwpmNetEventEnum2, "FwpmNetEventEnum2", 1024, false, Native.FwpmNetEventDestroyEnumHandle0,
                delegate(IntPtr entry)
                {
                    Hashtable e = NetEventReader.Read(entry);
                    if (e != null) events.Add(e);
                });
            return events;
        }

        /// <summary>An FwpmXxxEnum call (fwpmu.h): up to requested entries of an enumeration, as an array of pointers.</summary>
        private delegate uint EnumPage(IntPtr engine, IntPtr enumHandle, uint requested, out IntPtr entries, out uint returned);

        /// <summary>
        /// Reads an enumeration WFP opened (FwpmXxxCreateEnumHandle) page by page, as the FwpmXxxEnum calls work: an
        /// array of pointers to at most pageSize entries, the last page shorter than a page; each array is freed with
        /// FwpmFreeMemory0. keepPages keeps the arrays until FreeAll (for copies that point into them, as FWPM_FILTER0's
        /// names and conditions do) instead of freeing each once read. The handle is destroyed whatever happens.
        /// </summary>
        private void ReadPages(IntPtr enumHandle, EnumPage enumPage, string what, uint pageSize, bool keepPages,
                               Func<IntPtr, IntPtr, uint> destroyEnumHandle, Action<IntPtr> readEntry)
        {
            try
            {
                while (true)
                {
                    IntPtr entries;
                    uint returned;
                    Native.Check(enumPage(handle, enumHandle, pageSize, out entries, out returned), what);
                    if (keepPages) enumerated.Add(entries);
                    try
                    {
                        for (int i = 0; i < returned; i++) readEntry(Marshal.ReadIntPtr(entries, i * IntPtr.Size));
                    }
                    finally
                    {
                        if (!keepPages) Native.FwpmFreeMemory0(ref entries);
                    }
                    if (returned < pageSize) break;
                }
            }
            finally
            {
                destroyEnumHandle(handle, enumHandle);
            }
        }

        /// <summary>
        /// Replace everything of ours by rendered, in one transaction: the kernel sees the old filter set
        /// until the commit and the new one after it, never a mix, and a failure changes nothing.
        /// </summary>
        public void Apply(IDictionary rendered, IDictionary bindings)
        {
            Native.Check(Native.FwpmTransactionBegin0(handle, 0), "FwpmTransactionBegin0");
            try
            {
                DeleteOurs((IList)rendered["boottime"]);
                IDictionary provider = (IDictionary)rendered["provider"];
                IDictionary sublayer = (IDictionary)rendered["sublayer"];
                DeleteSublayerAndProvider();
                AddProvider(Values.Str(provider["name"]));
                AddSublayer(Values.Str(sublayer["name"]), (ushort)Values.U64(sublayer["weight"]));
                foreach (IDictionary f in (IEnumerable)rendered["filters"]) AddFilter(f, bindings, false);
                foreach (IDictionary f in (IEnumerable)rendered["boottime"]) AddFilter(f, bindings, true);
                Native.Check(Native.FwpmTransactionCommit0(handle), "FwpmTransactionCommit0");
            }
            catch
            {
                Native.FwpmTransactionAbort0(handle);
                throw;
            }
            finally
            {
                FreeAll();
            }
        }

        /// <summary>Remove the provider, the sublayer, their filters and our boot-time filters; nothing else.</summary>
        public void RemoveAll(IEnumerable boottimeKeys)
        {
            Native.Check(Native.FwpmTransactionBegin0(handle, 0), "FwpmTransactionBegin0");
            try
            {
                List<IDictionary> boot = new List<IDictionary>();
                foreach (object key in boottimeKeys)
                {
                    Hashtable f = new Hashtable();
                    f["key"] = key;
                    boot.Add(f);
                }
                DeleteOurs(boot);
                DeleteSublayerAndProvider();
                Native.Check(Native.FwpmTransactionCommit0(handle), "FwpmTransactionCommit0");
            }
            catch
            {
                Native.FwpmTransactionAbort0(handle);
                throw;
            }
            finally
            {
                FreeAll();
            }
        }

        /// <summary>
        /// What the host has: provider and sublayer, our filters and boot-time filters in the renderer's
        /// shape (LUIDs turned back into the patterns they were bound from, app ids into programs), and
        /// other providers' hard permits at our layers with their sublayer's weight.
        /// </summary>
        public Hashtable Read(IDictionary bindings, IDictionary programs, IEnumerable boottimeKeys)
        {
            Hashtable found = new Hashtable();
            IntPtr p;
            Guid pk = providerKey;
            found["provider"] = Native.FwpmProviderGetByKey0(handle, ref pk, out p) == 0;
            if (p != IntPtr.Zero) Native.FwpmFreeMemory0(ref p);
            int? weight = SublayerWeight(sublayerKey);
            if (weight.HasValue)
            {
                Hashtable s = new Hashtable();
                s["weight"] = weight.Value;
                found["sublayer"] = s;
            }
            else
            {
                found["sublayer"] = null;
            }
            HashSet<Guid> bootKeys = new HashSet<Guid>();
            foreach (object k in boottimeKeys) bootKeys.Add(new Guid(Values.Str(k)));
            List<Hashtable> ours = new List<Hashtable>(), boot = new List<Hashtable>(), foreign = new List<Hashtable>();
            Dictionary<Guid, int?> weights = new Dictionary<Guid, int?>();
            foreach (string layer in Names.Layers.Keys)
            {
                foreach (FwpmFilter f in Enumerate(Names.Layers[layer]))
                {
                    if (bootKeys.Contains(f.FilterKey))
                        boot.Add(Describe(f, layer, bindings, programs));
                    else if (IsOurs(f))
                        ours.Add(Describe(f, layer, bindings, programs));
                    else if (f.ActionType == Names.ActionPermit && (f.Flags & Names.FilterClearActionRight) != 0)
                    {
                        if (!weights.ContainsKey(f.SubLayerKey)) weights[f.SubLayerKey] = SublayerWeight(f.SubLayerKey);
                        Hashtable d = new Hashtable();
                        d["name"] = Marshal.PtrToStringUni(f.Display.Name);
                        d["provider"] = f.ProviderKey == IntPtr.Zero ? "" : Marshal.PtrToStructure(f.ProviderKey, typeof(Guid)).ToString();
                        d["sublayer_weight"] = weights[f.SubLayerKey].HasValue ? weights[f.SubLayerKey].Value : 0;
                        d["action"] = "PERMIT";
                        d["flags"] = Names.FlagNames(f.Flags).ToArray();
                        d["layer"] = layer;
                        foreign.Add(d);
                    }
                }
            }
            found["filters"] = ours.ToArray();
            found["boottime"] = boot.ToArray();
            found["foreign"] = foreign.ToArray();
            FreeAll();
            return found;
        }

        private void DeleteSublayerAndProvider()
        {
            Guid sublayer = sublayerKey, provider = providerKey;
            Ignore(Native.FwpmSubLayerDeleteByKey0(handle, ref sublayer), Native.FwpESublayerNotFound, "FwpmSubLayerDeleteByKey0");
            Ignore(Native.FwpmProviderDeleteByKey0(handle, ref provider), Native.FwpEProviderNotFound, "FwpmProviderDeleteByKey0");
        }

        /// <summary>Ours: of our provider, or in our sublayer (whoever put it there).</summary>
        private bool IsOurs(FwpmFilter f)
        {
            return f.SubLayerKey == sublayerKey ||
                (f.ProviderKey != IntPtr.Zero && (Guid)Marshal.PtrToStructure(f.ProviderKey, typeof(Guid)) == providerKey);
        }

        private static List<FwpmFilterCondition> ConditionsOf(FwpmFilter f)
        {
            List<FwpmFilterCondition> conditions = new List<FwpmFilterCondition>();
            int size = Marshal.SizeOf(typeof(FwpmFilterCondition));
            for (int i = 0; i < f.NumFilterConditions; i++)
                conditions.Add((FwpmFilterCondition)Marshal.PtrToStructure(
                    new IntPtr(f.FilterCondition.ToInt64() + i * size), typeof(FwpmFilterCondition)));
            return conditions;
        }

        private static void Ignore(uint status, uint expected, string what)
        {
            if (status != expected) Native.Check(status, what);
        }

        private void DeleteOurs(IList boottime)
        {
            foreach (string layer in Names.Layers.Keys)
            {
                foreach (FwpmFilter f in Enumerate(Names.Layers[layer]))
                {
                    if (IsOurs(f))
                    {
                        Guid key = f.FilterKey;
                        Ignore(Native.FwpmFilterDeleteByKey0(handle, ref key), Native.FwpEFilterNotFound, "FwpmFilterDeleteByKey0");
                    }
                }
            }
            foreach (IDictionary f in boottime)
            {
                Guid key = new Guid(Values.Str(f["key"]));
                Ignore(Native.FwpmFilterDeleteByKey0(handle, ref key), Native.FwpEFilterNotFound, "FwpmFilterDeleteByKey0");
            }
        }

        private int? SublayerWeight(Guid key)
        {
            IntPtr p;
            if (Native.FwpmSubLayerGetByKey0(handle, ref key, out p) != 0) return null;
            try
            {
                return ((FwpmSubLayer)Marshal.PtrToStructure(p, typeof(FwpmSubLayer))).Weight;
            }
            finally
            {
                Native.FwpmFreeMemory0(ref p);
            }
        }

        private List<FwpmFilter> Enumerate(Guid layer)
        {
            FwpmFilterEnumTemplate template = new FwpmFilterEnumTemplate();
            template.LayerKey = layer;
            template.EnumType = Native.EnumOverlapping;
            template.Flags = Native.EnumFlagIncludeBoottime;
            template.ActionMask = 0xFFFFFFFF;
            IntPtr enumHandle;
            Native.Check(Native.FwpmFilterCreateEnumHandle0(handle, ref template, out enumHandle), "FwpmFilterCreateEnumHandle0");
            List<FwpmFilter> filters = new List<FwpmFilter>();
            // The copies point into the pages (names, conditions): they are freed once the run is read (FreeAll).
            ReadPages(enumHandle, Native.FwpmFilterEnum0, "FwpmFilterEnum0", 256, true, Native.FwpmFilterDestroyEnumHandle0,
                delegate(IntPtr entry) { filters.Add((FwpmFilter)Marshal.PtrToStructure(entry, typeof(FwpmFilter))); });
            return filters;
        }

        private Hashtable Describe(FwpmFilter f, string layer, IDictionary bindings, IDictionary programs)
        {
            Hashtable d = new Hashtable();
            d["key"] = f.FilterKey.ToString();
            d["name"] = Marshal.PtrToStringUni(f.Display.Name);
            d["layer"] = layer;
            d["action"] = f.ActionType == Names.ActionBlock ? "BLOCK" : f.ActionType == Names.ActionPermit ? "PERMIT" : "0x" + f.ActionType.ToString("X");
            // An FWP_UINT8 weight is the 4 high-order bits of the 64-bit weight the BFE keeps (FWP_VALUE0 docs).
            d["weight"] = f.Weight.Type == Names.TypeUint8 ? (object)(int)(f.Weight.Value & 0xFF)
                : f.Weight.Type == Names.TypeUint64 ? (object)(int)(Marshal.ReadInt64(new IntPtr((long)f.Weight.Value)) >> 60 & 0xF)
                : null;
            d["flags"] = Names.FlagNames(f.Flags).ToArray();
            List<Hashtable> conditions = new List<Hashtable>();
            Dictionary<string, SortedSet<ulong>> interfaces = new Dictionary<string, SortedSet<ulong>>();
            bool icmp = IsIcmp(f);
            foreach (FwpmFilterCondition c in ConditionsOf(f))
            {
                string field = Names.NameOf(Names.Fields, c.FieldKey) ?? c.FieldKey.ToString();
                if (field == "IP_LOCAL_INTERFACE" || field == "IP_FORWARD_INTERFACE")
                {
                    if (!interfaces.ContainsKey(field)) interfaces[field] = new SortedSet<ulong>();
                    interfaces[field].Add((ulong)Marshal.ReadInt64(new IntPtr((long)c.Value.Value)));
                    continue;
                }
                if (field == "IP_LOCAL_PORT" && icmp) field = "ICMP_TYPE";
                conditions.Add(Condition(field, c.MatchType == Names.MatchFlagsAllSet ? "FLAGS_ALL_SET" : "EQUAL", ReadValue(c, field, programs)));
            }
            foreach (KeyValuePair<string, SortedSet<ulong>> pair in interfaces)
                foreach (string pattern in Unbind(pair.Value, bindings))
                    conditions.Add(Condition(pair.Key, "EQUAL", pattern));
            d["conditions"] = conditions.ToArray();
            return d;
        }

        private static bool IsIcmp(FwpmFilter f)
        {
            foreach (FwpmFilterCondition c in ConditionsOf(f))
            {
                if (c.FieldKey == Names.Fields["IP_PROTOCOL"] && ((c.Value.Value & 0xFF) == 1 || (c.Value.Value & 0xFF) == 58)) return true;
            }
            return false;
        }

        /// <summary>The patterns whose every bound LUID the filter names; LUIDs no pattern explains stay visible as drift.</summary>
        public static List<string> Unbind(ICollection<ulong> luids, IDictionary bindings)
        {
            List<string> patterns = new List<string>();
            HashSet<ulong> explained = new HashSet<ulong>();
            foreach (DictionaryEntry binding in bindings)
            {
                bool all = true;
                foreach (object luid in (IEnumerable)binding.Value) all &= luids.Contains(Values.U64(luid));
                if (!all) continue;
                patterns.Add(Values.Str(binding.Key));
                foreach (object luid in (IEnumerable)binding.Value) explained.Add(Values.U64(luid));
            }
            foreach (ulong luid in luids)
                if (!explained.Contains(luid)) patterns.Add("luid:" + luid.ToString(CultureInfo.InvariantCulture));
            patterns.Sort(StringComparer.Ordinal);
            return patterns;
        }

        private static Hashtable Condition(string field, string match, object value)
        {
            Hashtable c = new Hashtable();
            c["field"] = field;
            c["match"] = match;
            c["value"] = value;
            return c;
        }

        private static object ReadValue(FwpmFilterCondition c, string field, IDictionary programs)
        {
            IntPtr pointer = new IntPtr((long)c.Value.Value);
            switch (c.Value.Type)
            {
                case Names.TypeUint8:
                case Names.TypeUint16:
                    return (int)(c.Value.Value & 0xFFFF);
                case Names.TypeUint32:
                    return field == "FLAGS" && (c.Value.Value & 0xFFFFFFFF) == Names.ConditionFlagIsLoopback
                        ? (object)"IS_LOOPBACK" : (object)(long)(c.Value.Value & 0xFFFFFFFF);
                case Names.TypeV4AddrMask:
                    {
                        uint address = (uint)Marshal.ReadInt32(pointer), mask = (uint)Marshal.ReadInt32(pointer, 4);
                        int prefix = 0;
                        while (prefix < 32 && (mask & (0x80000000u >> prefix)) != 0) prefix++;
                        byte[] bytes = { (byte)(address >> 24), (byte)(address >> 16), (byte)(address >> 8), (byte)address };
                        return new IPAddress(bytes) + "/" + prefix;
                    }
                case Names.TypeV6AddrMask:
                    {
                        byte[] bytes = new byte[16];
                        Marshal.Copy(pointer, bytes, 0, 16);
                        return Ipv6Text(bytes) + "/" + Marshal.ReadByte(pointer, 16);
                    }
                case Names.TypeByteBlob:
                    {
                        byte[] blob = new byte[Marshal.ReadInt32(pointer)];
                        Marshal.Copy(Marshal.ReadIntPtr(pointer, 8), blob, 0, blob.Length);
                        foreach (DictionaryEntry program in programs)
                            if (Convert.ToBase64String((byte[])program.Value) == Convert.ToBase64String(blob)) return program.Key;
                        return "app-id:" + Encoding.Unicode.GetString(blob).TrimEnd('\0');
                    }
                default:
                    return "type-" + c.Value.Type;
            }
        }

        /// <summary>RFC 5952 text, as Python's ipaddress writes it, so that read-back compares as text.</summary>
        public static string Ipv6Text(byte[] bytes)
        {
            return new IPAddress(bytes).ToString().ToLowerInvariant().Split('%')[0];
        }

        /// <summary>The app ids of the programs the policy names, expanded as the host expands them.</summary>
        public static Hashtable AppIds(IEnumerable programs)
        {
            Hashtable ids = new Hashtable(StringComparer.OrdinalIgnoreCase);
            foreach (object p in programs)
            {
                string path = Environment.ExpandEnvironmentVariables(Values.Str(p));
                IntPtr blob;
                Native.Check(Native.FwpmGetAppIdFromFileName0(path, out blob), "FwpmGetAppIdFromFileName0(" + path + ")");
                try
                {
                    byte[] bytes = new byte[Marshal.ReadInt32(blob)];
                    Marshal.Copy(Marshal.ReadIntPtr(blob, 8), bytes, 0, bytes.Length);
                    ids[Values.Str(p)] = bytes;
                }
                finally
                {
                    Native.FwpmFreeMemory0(ref blob);
                }
            }
            return ids;
        }

        private IntPtr Alloc(int size)
        {
            IntPtr p = Marshal.AllocHGlobal(size);
            for (int i = 0; i < size; i++) Marshal.WriteByte(p, i, 0);
            allocated.Add(p);
            return p;
        }

        private IntPtr Text(string s)
        {
            IntPtr p = Marshal.StringToHGlobalUni(s);
            allocated.Add(p);
            return p;
        }

        private IntPtr Luid(ulong luid)
        {
            IntPtr p = Alloc(8);
            Marshal.WriteInt64(p, unchecked((long)luid));
            return p;
        }

        private IntPtr Struct(object value)
        {
            IntPtr p = Alloc(Marshal.SizeOf(value));
            Marshal.StructureToPtr(value, p, false);
            return p;
        }

        private void FreeAll()
        {
            foreach (IntPtr p in allocated) Marshal.FreeHGlobal(p);
            allocated.Clear();
            for (int i = 0; i < enumerated.Count; i++)
            {
                IntPtr p = enumerated[i];
                Native.FwpmFreeMemory0(ref p);
            }
            enumerated.Clear();
        }

        private void AddProvider(string name)
        {
            FwpmProvider provider = new FwpmProvider();
            provider.ProviderKey = providerKey;
            provider.Display.Name = Text(name);
            provider.Display.Description = Text(name + ": VPN kill switch (vpnguard.killswitch.win_wfp_killswitch)");
            provider.Flags = Names.ObjectPersistent;
            Native.Check(Native.FwpmProviderAdd0(handle, ref provider, IntPtr.Zero), "FwpmProviderAdd0");
        }

        private void AddSublayer(string name, ushort weight)
        {
            FwpmSubLayer sublayer = new FwpmSubLayer();
            sublayer.SubLayerKey = sublayerKey;
            sublayer.Display.Name = Text(name);
            sublayer.Display.Description = Text(name + ": the kill switch decides here first");
            sublayer.Flags = Names.ObjectPersistent;
            sublayer.ProviderKey = Struct(providerKey);
            sublayer.Weight = weight;
            Native.Check(Native.FwpmSubLayerAdd0(handle, ref sublayer, IntPtr.Zero), "FwpmSubLayerAdd0");
        }

        private void AddFilter(IDictionary spec, IDictionary bindings, bool boottime)
        {
            List<FwpmFilterCondition> conditions = new List<FwpmFilterCondition>();
            foreach (IDictionary c in (IEnumerable)spec["conditions"]) conditions.AddRange(Build(c, bindings));
            FwpmFilter f = new FwpmFilter();
            f.FilterKey = new Guid(Values.Str(spec["key"]));
            f.Display.Name = Text(Values.Str(spec["name"]));
            f.Display.Description = Text(Values.Str(spec["description"]));
            f.Flags = Names.Flags((IEnumerable)spec["flags"]);
            // Boot-time objects cannot reference persistent ones: no provider, the built-in universal sublayer.
            f.ProviderKey = boottime ? IntPtr.Zero : Struct(providerKey);
            f.LayerKey = Names.Layers[Values.Str(spec["layer"])];
            f.SubLayerKey = boottime ? Names.UniversalSublayer : sublayerKey;
            f.Weight.Type = Names.TypeUint8;
            f.Weight.Value = (byte)Values.U64(spec["weight"]);
            f.ActionType = Values.Str(spec["action"]) == "BLOCK" ? Names.ActionBlock : Names.ActionPermit;
            f.NumFilterConditions = (uint)conditions.Count;
            if (conditions.Count > 0)
            {
                int size = Marshal.SizeOf(typeof(FwpmFilterCondition));
                f.FilterCondition = Alloc(size * conditions.Count);
                for (int i = 0; i < conditions.Count; i++)
                    Marshal.StructureToPtr(conditions[i], new IntPtr(f.FilterCondition.ToInt64() + i * size), false);
            }
            ulong id;
            Native.Check(Native.FwpmFilterAdd0(handle, ref f, IntPtr.Zero, out id), "FwpmFilterAdd0(" + spec["name"] + ")");
        }

        private IEnumerable<FwpmFilterCondition> Build(IDictionary c, IDictionary bindings)
        {
            string field = Values.Str(c["field"]);
            object value = c["value"];
            List<FwpmFilterCondition> built = new List<FwpmFilterCondition>();
            FwpmFilterCondition condition = new FwpmFilterCondition();
            condition.FieldKey = Names.Fields[field];
            condition.MatchType = Values.Str(c["match"]) == "FLAGS_ALL_SET" ? Names.MatchFlagsAllSet : Names.MatchEqual;
            switch (field)
            {
                case "IP_LOCAL_INTERFACE":
                case "IP_FORWARD_INTERFACE":
                    foreach (object luid in (IEnumerable)bindings[Values.Str(value)])
                    {
                        FwpmFilterCondition one = condition;
                        one.Value.Type = Names.TypeUint64;
                        one.Value.Value = (ulong)Luid(Values.U64(luid)).ToInt64();
                        built.Add(one);
                    }
                    return built;
                case "IP_PROTOCOL":
                    condition.Value.Type = Names.TypeUint8;
                    condition.Value.Value = (byte)Values.U64(value);
                    break;
                case "IP_REMOTE_PORT":
                case "IP_LOCAL_PORT":
                case "ICMP_TYPE":
                    condition.Value.Type = Names.TypeUint16;
                    condition.Value.Value = (ushort)Values.U64(value);
                    break;
                case "FLAGS":
                    condition.Value.Type = Names.TypeUint32;
                    condition.Value.Value = Names.ConditionFlagIsLoopback;
                    break;
                case "ALE_APP_ID":
                    {
                        byte[] id = (byte[])AppIds(new object[] { value })[Values.Str(value)];
                        IntPtr data = Alloc(id.Length);
                        Marshal.Copy(id, 0, data, id.Length);
                        IntPtr blob = Alloc(16);
                        Marshal.WriteInt32(blob, id.Length);
                        Marshal.WriteIntPtr(blob, 8, data);
                        condition.Value.Type = Names.TypeByteBlob;
                        condition.Value.Value = (ulong)blob.ToInt64();
                        break;
                    }
                case "IP_REMOTE_ADDRESS":
                    {
                        string[] parts = Values.Str(value).Split('/');
                        IPAddress address = IPAddress.Parse(parts[0]);
                        int prefix = int.Parse(parts[1], CultureInfo.InvariantCulture);
                        byte[] bytes = address.GetAddressBytes();
                        if (bytes.Length == 4)
                        {
                            // FWP_V4_ADDR_AND_MASK: address and mask in host order.
                            IntPtr v4 = Alloc(8);
                            uint host = ((uint)bytes[0] << 24) | ((uint)bytes[1] << 16) | ((uint)bytes[2] << 8) | bytes[3];
                            Marshal.WriteInt32(v4, unchecked((int)host));
                            Marshal.WriteInt32(v4, 4, unchecked((int)(prefix == 0 ? 0u : 0xFFFFFFFFu << (32 - prefix))));
                            condition.Value.Type = Names.TypeV4AddrMask;
                            condition.Value.Value = (ulong)v4.ToInt64();
                        }
                        else
                        {
                            // FWP_V6_ADDR_AND_MASK: 16 address bytes and the prefix length.
                            IntPtr v6 = Alloc(17);
                            Marshal.Copy(bytes, 0, v6, 16);
                            Marshal.WriteByte(v6, 16, (byte)prefix);
                            condition.Value.Type = Names.TypeV6AddrMask;
                            condition.Value.Value = (ulong)v6.ToInt64();
                        }
                        break;
                    }
                default:
                    throw new ArgumentException("unknown condition field " + field);
            }
            built.Add(condition);
            return built;
        }
    }

    // The evidence (issue 15), from Microsoft's documentation:
    // - WFP filters keep no hit counts; the BFE logs net events: FWPM_NET_EVENT_CLASSIFY_DROP0/2 carries the run-time
    //   filterId and layerId of the filter that dropped (learn.microsoft.com/windows/win32/api/fwpmtypes/
    //   ns-fwpmtypes-fwpm_net_event_classify_drop0), FWPM_NET_EVENT_CLASSIFY_ALLOW0 those of the filter that allowed
    //   (Windows 8+, .../ns-fwpmtypes-fwpm_net_event_classify_allow0); FwpmNetEventEnum2 returns FWPM_NET_EVENT2 and
    //   fails with FWP_E_NET_EVENTS_DISABLED when collection is off (.../api/fwpmu/nf-fwpmu-fwpmneteventenum2).
    // - FwpmEngineSetOption0: FWPM_ENGINE_COLLECT_NET_EVENTS (0) is 1 by default; FWPM_ENGINE_NET_EVENT_MATCH_ANY_KEYWORDS
    //   (1) selects further events, FWPM_NET_EVENT_KEYWORD_CLASSIFY_ALLOW (0x10) the allow events
    //   (.../api/fwpmu/nf-fwpmu-fwpmenginesetoption0, fwpmtypes.h).
    // - ALE_AUTH_CONNECT is matched for TCP connect() and for the first UDP packet to a remote address and port, and in
    //   a TCP connection it comes before the SYN reaches the transport layer (.../windows/win32/fwp/ale-layers,
    //   .../fwp/tcp-packet-flows): a probe refused there put nothing on the wire. A connect refused by a filter fails
    //   with WSAEACCES (10013), as reported for WFP and Windows Firewall outbound blocks (nicocha30/ligolo-ng#11,
    //   microsoft/WSL#722) and asserted by molecule/windows; the verdict does not rest on it alone (ProbeVerdict.Judge).
    // - The Security log's audit events: Filtering Platform Packet Drop {0CCE9225-...} (5152) and Filtering Platform
    //   Connection {0CCE9226-...} (5156 permitted, 5157 blocked) (.../windows/win32/fwp/auditing-and-logging).
    /// <summary>
    /// Reads one FWPM_NET_EVENT2 (fwpmtypes.h, x64 offsets): FWPM_NET_EVENT_HEADER2 (timeStamp 0, flags 8, ipVersion 12,
    /// ipProtocol 16, local address 20, remote address 36, localPort 52, remotePort 54, appId 64/72), type at 104 and
    /// the pointer to the type's structure at 112, whose first members are filterId (UINT64) and layerId (UINT16)
    /// for both FWPM_NET_EVENT_CLASSIFY_DROP2 and FWPM_NET_EVENT_CLASSIFY_ALLOW0. Other types give null.
    /// </summary>
    public static class NetEventReader
    {
        public const int TypeClassifyDrop = 3, TypeClassifyAllow = 6;
        public const uint FlagProtocol = 0x1, FlagLocalAddr = 0x2, FlagRemoteAddr = 0x4, FlagLocalPort = 0x8,
            FlagRemotePort = 0x10, FlagAppId = 0x20;

        public static Hashtable Read(IntPtr netEvent)
        {
            int type = Marshal.ReadInt32(netEvent, 104);
            if (type != TypeClassifyDrop && type != TypeClassifyAllow) return null;
            IntPtr detail = Marshal.ReadIntPtr(netEvent, 112);
            if (detail == IntPtr.Zero) return null;
            uint flags = (uint)Marshal.ReadInt32(netEvent, 8);
            bool v6 = Marshal.ReadInt32(netEvent, 12) == 1;  // FWP_IP_VERSION_V6
            Hashtable e = new Hashtable();
            e["type"] = type == TypeClassifyDrop ? "drop" : "allow";
            e["time"] = DateTime.FromFileTimeUtc(Marshal.ReadInt64(netEvent, 0)).ToString("o", CultureInfo.InvariantCulture);
            e["filter_id"] = ((ulong)Marshal.ReadInt64(detail, 0)).ToString(CultureInfo.InvariantCulture);
            e["layer_id"] = (int)(ushort)Marshal.ReadInt16(detail, 8);
            e["family"] = v6 ? "ipv6" : "ipv4";
            if ((flags & FlagProtocol) != 0) e["protocol"] = (int)Marshal.ReadByte(netEvent, 16);
            if ((flags & FlagLocalAddr) != 0) e["local"] = Address(netEvent, 20, v6);
            if ((flags & FlagRemoteAddr) != 0) e["remote"] = Address(netEvent, 36, v6);
            if ((flags & FlagLocalPort) != 0) e["local_port"] = (int)(ushort)Marshal.ReadInt16(netEvent, 52);
            if ((flags & FlagRemotePort) != 0) e["remote_port"] = (int)(ushort)Marshal.ReadInt16(netEvent, 54);
            if ((flags & FlagAppId) != 0)
            {
                int size = Marshal.ReadInt32(netEvent, 64);
                IntPtr data = Marshal.ReadIntPtr(netEvent, 72);
                if (size > 0 && data != IntPtr.Zero) e["program"] = Marshal.PtrToStringUni(data, size / 2).TrimEnd('\0');
            }
            return e;
        }

        private static string Address(IntPtr p, int offset, bool v6)
        {
            if (v6)
            {
                byte[] bytes = new byte[16];
                Marshal.Copy(new IntPtr(p.ToInt64() + offset), bytes, 0, 16);
                return Engine.Ipv6Text(bytes);
            }
            // A UINT32 in host order, as WFP keeps IPv4 addresses everywhere (FWP_V4_ADDR_AND_MASK likewise).
            uint a = (uint)Marshal.ReadInt32(p, offset);
            return new IPAddress(new[] { (byte)(a >> 24), (byte)(a >> 16), (byte)(a >> 8), (byte)a }).ToString();
        }
    }

    /// <summary>Address and network tests on text, as the renderer writes networks ("192.0.2.0/24", "2001:db8::/32").</summary>
    public static class Cidr
    {
        public static bool Contains(string network, string address)
        {
            string[] parts = network.Split('/');
            IPAddress net, host;
            if (!IPAddress.TryParse(parts[0], out net) || !IPAddress.TryParse(address.Split('%')[0], out host)) return false;
            byte[] a = net.GetAddressBytes(), b = host.GetAddressBytes();
            if (a.Length != b.Length) return false;
            int prefix = parts.Length > 1 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : a.Length * 8;
            for (int bit = 0; bit < prefix; bit++)
                if (((a[bit / 8] ^ b[bit / 8]) & (0x80 >> (bit % 8))) != 0) return false;
            return true;
        }

        /// <summary>Link-local, loopback and unspecified addresses never carry traffic off the link: the probe skips them.</summary>
        public static bool IsGlobal(string address)
        {
            foreach (string n in new[] { "127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/32", "::1/128", "fe80::/10", "::/128" })
                if (Contains(n, address)) return false;
            IPAddress parsed;
            return IPAddress.TryParse(address.Split('%')[0], out parsed);
        }
    }

    /// <summary>
    /// The counters: WFP filters keep no hit counts, so each counter counts the net events of the filters the
    /// renderer mapped to it (rendered["counters"]). Totals are kept on the host between runs (a ledger), since
    /// the BFE keeps events only in a bounded buffer: a total is a lower bound whenever events were overwritten
    /// before a run read them.
    /// </summary>
    public static class NetEvents
    {
        /// <summary>The counter one event counts in, by its filter's rules (first match); null when none.</summary>
        public static string CounterOf(IDictionary e, IList rules)
        {
            foreach (IDictionary rule in rules)
            {
                if (rule.Contains("protocol") && !(e.Contains("protocol") && Values.U64(e["protocol"]) == Values.U64(rule["protocol"]))) continue;
                if (rule.Contains("remote_port") && !(e.Contains("remote_port") && Values.U64(e["remote_port"]) == Values.U64(rule["remote_port"]))) continue;
                if (rule.Contains("remote"))
                {
                    bool inside = false;
                    if (e.Contains("remote"))
                        foreach (object n in (IEnumerable)rule["remote"]) inside |= Cidr.Contains(Values.Str(n), Values.Str(e["remote"]));
                    if (!inside) continue;
                }
                return Values.Str(rule["counter"]);
            }
            return null;
        }

        /// <summary>
        /// totals (counter -> count, from the ledger; missing counters start at 0) plus the events of our filters:
        /// filterNames maps run-time filter ids to our filter names, counterRules filter names to their rules.
        /// Drops count only for block filters' rules and allows only for the exceptions', as mapped.
        /// </summary>
        public static Hashtable Tally(IEnumerable events, IDictionary filterNames, IDictionary counterRules, IDictionary totals, IEnumerable counterNames)
        {
            Hashtable counted = new Hashtable();
            foreach (object name in counterNames)
                counted[Values.Str(name)] = totals != null && totals.Contains(Values.Str(name)) ? (long)Values.U64(totals[Values.Str(name)]) : 0L;
            foreach (IDictionary e in events)
            {
                string id = Values.Str(e["filter_id"]);
                if (!filterNames.Contains(id)) continue;
                string filter = Values.Str(filterNames[id]);
                if (!counterRules.Contains(filter)) continue;
                string counter = CounterOf(e, (IList)counterRules[filter]);
                if (counter != null && counted.ContainsKey(counter)) counted[counter] = (long)counted[counter] + 1;
            }
            return counted;
        }
    }

    /// <summary>
    /// The BFE options the counters need (FwpmEngineSetOption0): net events collected (FWPM_ENGINE_COLLECT_NET_EVENTS,
    /// 1 by default) and, for the exceptions' counters, the CLASSIFY_ALLOW keyword (0x10) in
    /// FWPM_ENGINE_NET_EVENT_MATCH_ANY_KEYWORDS, without which WFP logs no allow event. Other keywords are kept as
    /// they were before the module first changed them (saved: collect, keywords).
    /// </summary>
    public static class EngineOptions
    {
        public const uint KeywordClassifyAllow = 0x10;

        public static Hashtable Targets(uint collect, uint keywords, IDictionary saved, bool countAllows)
        {
            uint before = saved != null && saved.Contains("keywords") ? (uint)Values.U64(saved["keywords"]) : keywords;
            Hashtable t = new Hashtable();
            t["collect"] = 1u;
            t["keywords"] = countAllows ? before | KeywordClassifyAllow : before;
            List<string> drift = new List<string>();
            if (collect != 1) drift.Add("WFP does not collect net events, so the kill switch's counters cannot count");
            if (keywords != (uint)t["keywords"])
                drift.Add(string.Format(CultureInfo.InvariantCulture, "WFP's net event keywords are 0x{0:X}, not 0x{1:X}{2}", keywords,
                    (uint)t["keywords"], countAllows ? " (the exception counters count allow events)" : " (as they were before the kill switch)"));
            t["drift"] = drift.ToArray();
            return t;
        }
    }

    /// <summary>
    /// The audit's live probe, decided from what the host reports. Plan lists the checks (sockets bound to each
    /// global address of every up interface that is not a tunnel; TCP, UDP and DNS to the canary; DNS to the
    /// canary as a resolver that is not the tunnel's); Judge decides each from the socket call's Winsock error
    /// and the net events the BFE logged for it.
    /// </summary>
    public static class ProbeVerdict
    {
        public const int ProbePort = 9, DnsPort = 53;
        public const int WsaEacces = 10013, WsaEwouldblock = 10035, WsaEaddrnotavail = 10049, WsaEnetunreach = 10051,
            WsaEconnreset = 10054, WsaEtimedout = 10060, WsaEconnrefused = 10061, WsaEhostunreach = 10065;

        public static bool IsTunnel(string alias, IEnumerable patterns)
        {
            foreach (object p in patterns) if (TunnelBinding.AliasMatches(Values.Str(p), alias)) return true;
            return false;
        }

        /// <summary>interfaces: [{alias, status ("Up", "Down", ...), loopback, addresses}], as Host.Interfaces gives them.</summary>
        public static List<Hashtable> Plan(IEnumerable interfaces, IEnumerable patterns, bool tunnelResolversOnly, string canaryV4, string canaryV6)
        {
            List<Hashtable> checks = new List<Hashtable>();
            string[,] families = { { "ipv4", canaryV4 }, { "ipv6", canaryV6 } };
            List<IDictionary> sorted = new List<IDictionary>();
            foreach (IDictionary i in interfaces) sorted.Add(i);
            sorted.Sort((a, b) => string.CompareOrdinal(Values.Str(a["alias"]), Values.Str(b["alias"])));
            foreach (IDictionary nic in sorted)
            {
                string alias = Values.Str(nic["alias"]);
                if ((nic.Contains("loopback") && Convert.ToBoolean(nic["loopback"], CultureInfo.InvariantCulture)) || IsTunnel(alias, patterns)) continue;
                for (int f = 0; f < 2; f++)
                {
                    string family = families[f, 0];
                    List<string> mine = new List<string>();
                    foreach (object a in (IEnumerable)nic["addresses"])
                    {
                        string address = Values.Str(a);
                        if (Cidr.IsGlobal(address) && (address.Contains(":") == (family == "ipv6"))) mine.Add(address);
                    }
                    string why = Values.Str(nic["status"]) != "Up" ? "interface " + Values.Str(nic["status"]).ToLowerInvariant()
                        : mine.Count == 0 ? "no global " + family + " address" : null;
                    foreach (string kind in new[] { "udp", "tcp", "dns" })
                    {
                        Hashtable c = Check(kind + " " + family + " bound to " + alias, alias, family, kind,
                            why == null ? mine[0] : "", families[f, 1]);
                        if (why != null) { c["verdict"] = "not run"; c["detail"] = why; }
                        checks.Add(c);
                    }
                }
            }
            for (int f = 0; f < 2; f++)
            {
                Hashtable c = Check("dns " + families[f, 0] + " to a resolver that is not the tunnel's", "", families[f, 0], "dns", "", families[f, 1]);
                if (!tunnelResolversOnly)
                {
                    c["verdict"] = "not run";
                    c["detail"] = "the policy lets DNS reach any resolver through the tunnel";
                }
                checks.Add(c);
            }
            return checks;
        }

        private static Hashtable Check(string name, string alias, string family, string kind, string source, string canary)
        {
            Hashtable c = new Hashtable();
            c["check"] = name;
            c["interface"] = alias;
            c["family"] = family;
            c["protocol"] = kind == "tcp" ? "tcp" : "udp";
            c["kind"] = kind;
            c["source"] = source;
            c["destination"] = canary;
            c["port"] = kind == "dns" ? DnsPort : ProbePort;
            return c;
        }

        /// <summary>
        /// The verdict of one check that ran. error: the Winsock error of the bind, connect or send (0: it went
        /// through; bindFailed: the socket could not take the address). localPort: the port it was bound to.
        /// events: net events read after the probe. A call refused with WSAEACCES was refused by a filter; one that
        /// went through (or a TCP connect left in progress) leaked unless a drop event shows a filter dropped it
        /// before it left: UDP sends report no refusal of their own on every version, the drop event does.
        /// </summary>
        public static void Judge(Hashtable check, int error, bool bindFailed, int localPort, IEnumerable events, IDictionary filterNames)
        {
            check.Remove("kind");
            if (bindFailed)
            {
                check["verdict"] = "not run";
                check["detail"] = "could not bind to " + check["source"] + " (Winsock error " + error + ")";
                return;
            }
            string filter = null;
            int protocol = Values.Str(check["protocol"]) == "tcp" ? 6 : 17;
            foreach (IDictionary e in events)
            {
                if (Values.Str(e["type"]) != "drop" || !e.Contains("local_port") || (int)Values.U64(e["local_port"]) != localPort) continue;
                if (e.Contains("protocol") && (int)Values.U64(e["protocol"]) != protocol) continue;
                if (e.Contains("remote") && Values.Str(e["remote"]) != Values.Str(check["destination"])) continue;
                string id = Values.Str(e["filter_id"]);
                filter = filterNames.Contains(id) ? Values.Str(filterNames[id]) : "filter " + id + " of another provider";
                break;
            }
            string by = filter == null ? "" : " at " + filter;
            if (error == WsaEacces)
            {
                check["verdict"] = "refused";
                check["detail"] = "refused by the firewall (WSAEACCES)" + by;
            }
            else if (error == WsaEnetunreach)
            {
                // The route is looked up before ALE_AUTH_CONNECT (its conditions name the route's interface).
                check["verdict"] = "refused";
                check["detail"] = "refused by routing (WSAENETUNREACH)" + by;
            }
            else if (error == WsaEconnrefused || error == WsaEconnreset || error == WsaEtimedout || error == WsaEhostunreach)
            {
                // The firewall let it through and something answered or was asked: a SYN, or a neighbour request
                // for the canary on the link, left the host.
                check["verdict"] = "LEAKED";
                check["detail"] = "no filter refused it, and it left the host (Winsock error " + error + ")" + by;
            }
            else if (error != 0 && error != WsaEwouldblock)
            {
                check["verdict"] = "not run";
                check["detail"] = "the call failed for another reason (Winsock error " + error + ")" + by;
            }
            else if (filter != null)
            {
                check["verdict"] = "refused";
                check["detail"] = "the call went through but the firewall dropped it" + by;
            }
            else
            {
                check["verdict"] = "LEAKED";
                string from = Values.Str(check["source"]) == "" ? "" : " from " + check["source"] + " (" + check["interface"] + ")";
                check["detail"] = (error == 0 ? "sent" : "connection attempt in progress") + from + " and no filter dropped it";
            }
        }

        /// <summary>
        /// Judges every check Host.Run ran (with its "error", "bind_failed" and "local_port") against the net events
        /// read after it, and gives each check as the module returns it: check, interface, family, protocol,
        /// source, verdict, detail.
        /// </summary>
        public static List<Hashtable> Finish(IEnumerable checks, IEnumerable events, IDictionary filterNames)
        {
            List<Hashtable> results = new List<Hashtable>();
            foreach (Hashtable c in checks)
            {
                if (!c.ContainsKey("verdict"))
                    Judge(c, c.ContainsKey("error") ? (int)Values.U64(c["error"]) : 0,
                          c.ContainsKey("bind_failed") && Convert.ToBoolean(c["bind_failed"], CultureInfo.InvariantCulture),
                          c.ContainsKey("local_port") ? (int)Values.U64(c["local_port"]) : 0, events, filterNames);
                Hashtable r = new Hashtable();
                foreach (string k in new[] { "check", "interface", "family", "protocol", "source", "verdict", "detail" }) r[k] = c[k];
                results.Add(r);
            }
            return results;
        }

        /// <summary>The tunnel's adapters, their state and addresses; up when one is up with an address.</summary>
        public static Hashtable Tunnel(IEnumerable interfaces, IEnumerable patterns)
        {
            List<Hashtable> found = new List<Hashtable>();
            bool up = false;
            foreach (IDictionary nic in interfaces)
            {
                string alias = Values.Str(nic["alias"]);
                if (!IsTunnel(alias, patterns)) continue;
                List<string> addresses = new List<string>();
                foreach (object a in (IEnumerable)nic["addresses"]) addresses.Add(Values.Str(a));
                Hashtable t = new Hashtable();
                t["interface"] = alias;
                t["state"] = Values.Str(nic["status"]);
                t["addresses"] = addresses.ToArray();
                found.Add(t);
                up |= Values.Str(nic["status"]) == "Up" && addresses.Count > 0;
            }
            found.Sort((a, b) => string.CompareOrdinal((string)a["interface"], (string)b["interface"]));
            Hashtable state = new Hashtable();
            state["up"] = up;
            state["interfaces"] = found.ToArray();
            return state;
        }

        /// <summary>
        /// Default routes (and the 0.0.0.0/1-style halves VPN clients add) that leave through an interface that is
        /// not a tunnel. routes: Get-NetRoute's DestinationPrefix, InterfaceAlias, NextHop, RouteMetric.
        /// </summary>
        public static List<string> RoutesOutsideTunnel(IEnumerable routes, IEnumerable patterns)
        {
            HashSet<string> catchAll = new HashSet<string> { "0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1" };
            List<string> found = new List<string>();
            foreach (IDictionary r in routes)
            {
                string prefix = Values.Str(r["DestinationPrefix"]), alias = Values.Str(r["InterfaceAlias"]);
                if (!catchAll.Contains(prefix) || alias == null || IsTunnel(alias, patterns)) continue;
                string hop = Values.Str(r["NextHop"]);
                string line = prefix + (hop == null || hop == "0.0.0.0" || hop == "::" ? "" : " via " + hop) + " dev " + alias;
                if (r.Contains("RouteMetric") && r["RouteMetric"] != null) line += " metric " + Values.Str(r["RouteMetric"]);
                found.Add(line);
            }
            found.Sort(StringComparer.Ordinal);
            return found;
        }
    }

    /// <summary>
    /// Logging (opt-in): the Security log's Filtering Platform audit events, each naming the filter's run-time id,
    /// layer, process and addresses. 5157 (connection blocked) and 5152 (packet dropped) for what was refused,
    /// 5156 (connection permitted) for the exceptions. The module only adds the settings a level needs to what
    /// the host had, records what it had, and puts that back on state=absent.
    /// The policy is read and set as flags through the audit API (SystemAuditPolicy), never as auditpol's report,
    /// whose column names and values are in the host's display language. Flags (AUDIT_POLICY_INFORMATION's
    /// AuditingInformation, learn.microsoft.com/windows/win32/api/ntsecapi/ns-ntsecapi-audit_policy_information):
    /// POLICY_AUDIT_EVENT_SUCCESS 0x1, POLICY_AUDIT_EVENT_FAILURE 0x2, POLICY_AUDIT_EVENT_NONE 0x4 (do not audit), and
    /// POLICY_AUDIT_EVENT_UNCHANGED 0 (to AuditSetSystemPolicy: leave the subcategory as it is).
    /// </summary>
    public static class AuditPolicy
    {
        public const string PacketDrop = "{0CCE9225-69AE-11D9-BED3-505054503030}";
        public const string Connection = "{0CCE9226-69AE-11D9-BED3-505054503030}";
        public const uint EventUnchanged = 0x0, EventSuccess = 0x1, EventFailure = 0x2, EventNone = 0x4;

        public static readonly string[] Subcategories = { PacketDrop, Connection };

        /// <summary>Flags -> {success, failure}; NONE (and the 0 a query may give for no auditing) is neither.</summary>
        public static bool[] Bools(uint flags)
        {
            return new[] { (flags & EventSuccess) != 0, (flags & EventFailure) != 0 };
        }

        /// <summary>{success, failure} -> the flags to set: NONE for neither, since 0 would leave the subcategory unchanged.</summary>
        public static uint Flags(bool[] auditing)
        {
            uint flags = (auditing[0] ? EventSuccess : 0) | (auditing[1] ? EventFailure : 0);
            return flags == 0 ? EventNone : flags;
        }

        // What earlier releases saved: the Inclusion Setting of `auditpol /get /r`, read by its English
        // column name, so only ever these English values (an English display language).
        private static readonly Dictionary<string, bool[]> LegacyText = new Dictionary<string, bool[]>(StringComparer.OrdinalIgnoreCase)
        {
            { "No Auditing", new[] { false, false } },
            { "Success", new[] { true, false } },
            { "Failure", new[] { false, true } },
            { "Success and Failure", new[] { true, true } },
        };

        /// <summary>
        /// A saved setting as {success, failure}: the flags this version saves, or the English text earlier releases
        /// saved. Null when it cannot be known (anything else, e.g. a localized text): a caller must then leave
        /// that subcategory as it is rather than guess "no auditing".
        /// </summary>
        public static bool[] Saved(object value)
        {
            string text = Values.Str(value);
            if (text == null) return null;
            text = text.Trim();
            uint flags;
            if (uint.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out flags)) return Bools(flags);
            bool[] legacy;
            return LegacyText.TryGetValue(text, out legacy) ? (bool[])legacy.Clone() : null;
        }

        private static bool[] SavedOf(IDictionary saved, string guid)
        {
            return saved != null && saved.Contains(guid) ? Saved(saved[guid]) : null;
        }

        /// <summary>
        /// What log (none, exceptions, refused, all) needs of each subcategory, on top of what the host had before the
        /// module first changed it (saved: GUID -> setting; null, missing or unreadable: what it has now), with
        /// current the flags the host has now (GUID -> flags): GUID -> the flags to set, for each subcategory whose
        /// setting must change. Going back to none puts the saved setting back.
        /// </summary>
        public static Hashtable Plan(string log, IDictionary current, IDictionary saved)
        {
            bool refused = log == "refused" || log == "all", exceptions = log == "exceptions" || log == "all";
            Hashtable plan = new Hashtable();
            foreach (string guid in Subcategories)
            {
                bool[] now = Bools(current.Contains(guid) ? (uint)Values.U64(current[guid]) : EventNone);
                bool[] before = SavedOf(saved, guid) ?? now;
                bool success = before[0] || (exceptions && guid == Connection), failure = before[1] || refused;
                if (success != now[0] || failure != now[1]) plan[guid] = Flags(new[] { success, failure });
            }
            return plan;
        }

        /// <summary>What state=absent sets back: GUID -> flags, for each subcategory whose saved setting can be read.</summary>
        public static Hashtable Restore(IDictionary saved)
        {
            Hashtable restore = new Hashtable();
            foreach (string guid in Subcategories)
            {
                bool[] before = SavedOf(saved, guid);
                if (before != null) restore[guid] = Flags(before);
            }
            return restore;
        }

        /// <summary>
        /// The calls to AuditSetSystemPolicy (each GUID -> flags) that take every subcategory of plan from its current
        /// flags to its planned ones. Whether a set replaces a subcategory's flags or adds to them is not said for
        /// AuditSetSystemPolicy; for the LSA call before it, new options are added to the existing ones unless
        /// combined with POLICY_AUDIT_EVENT_NONE (learn.microsoft.com/windows/win32/api/ntsecapi/ns-ntsecapi-policy_audit_events_info).
        /// So a subcategory that loses one flag and keeps another (Success and Failure back to Success) is first set
        /// to NONE, then to its flags: one documented value per call, right under either reading.
        /// </summary>
        public static List<Hashtable> SetSteps(IDictionary current, IDictionary plan)
        {
            Hashtable clear = new Hashtable(), set = new Hashtable();
            foreach (string guid in Subcategories)
            {
                if (!plan.Contains(guid)) continue;
                uint wanted = (uint)Values.U64(plan[guid]);
                uint now = current != null && current.Contains(guid) ? (uint)Values.U64(current[guid]) : EventNone;
                bool[] has = Bools(now), keeps = Bools(wanted);
                if (wanted != EventNone && ((has[0] && !keeps[0]) || (has[1] && !keeps[1]))) clear[guid] = EventNone;
                set[guid] = wanted;
            }
            List<Hashtable> steps = new List<Hashtable>();
            if (clear.Count > 0) steps.Add(clear);
            if (set.Count > 0) steps.Add(set);
            return steps;
        }

        /// <summary>The subcategories whose saved setting cannot be read (see Saved): left as they are, with a warning.</summary>
        public static string[] Unreadable(IDictionary saved)
        {
            List<string> unreadable = new List<string>();
            foreach (string guid in Subcategories)
                if (SavedOf(saved, guid) == null) unreadable.Add(guid);
            return unreadable.ToArray();
        }

        public static string NameOf(string guid)
        {
            return guid == PacketDrop ? "Filtering Platform Packet Drop" : "Filtering Platform Connection";
        }

        /// <summary>
        /// The error of a failed audit API call. Both calls need SeSecurityPrivilege (or AUDIT_QUERY_SYSTEM_POLICY /
        /// AUDIT_SET_SYSTEM_POLICY access on the Audit security object) and fail with ERROR_ACCESS_DENIED without it
        /// (learn.microsoft.com/windows/win32/api/ntsecapi/nf-ntsecapi-auditquerysystempolicy, .../nf-ntsecapi-auditsetsystempolicy);
        /// ERROR_PRIVILEGE_NOT_HELD is named the same way.
        /// </summary>
        public static Win32Exception Failure(string call, int error)
        {
            string why = error == 5 || error == 1314
                ? "; the Security audit policy can only be read and set with SeSecurityPrivilege, which an administrator's token holds (connect as an administrator)"
                : "";
            return new Win32Exception(error, string.Format(CultureInfo.InvariantCulture, "{0} failed: Win32 error {1}{2}", call, error, why));
        }
    }

    /// <summary>AUDIT_POLICY_INFORMATION (ntsecapi.h): 16 + 4 + 16 bytes, GUIDs 4-aligned, so no padding (36 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct AuditPolicyInformation
    {
        public Guid AuditSubCategoryGuid;
        public uint AuditingInformation;
        public Guid AuditCategoryGuid;
    }

    /// <summary>
    /// The system audit policy of our subcategories, through advapi32's audit API (the only part that touches the
    /// host). The caller enables SeSecurityPrivilege first (Ansible.Privilege.PrivilegeEnabler in the module).
    /// </summary>
    public static class SystemAuditPolicy
    {
        [DllImport("advapi32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.U1)]
        private static extern bool AuditQuerySystemPolicy([In] Guid[] subCategoryGuids, uint policyCount, out IntPtr auditPolicy);

        [DllImport("advapi32.dll", SetLastError = true)]
        [return: MarshalAs(UnmanagedType.U1)]
        private static extern bool AuditSetSystemPolicy([In] AuditPolicyInformation[] auditPolicy, uint policyCount);

        [DllImport("advapi32.dll")]
        private static extern void AuditFree(IntPtr buffer);

        /// <summary>GUID -> flags of each of AuditPolicy.Subcategories, as the host has them now.</summary>
        public static Hashtable Query()
        {
            Guid[] asked = new Guid[AuditPolicy.Subcategories.Length];
            for (int i = 0; i < asked.Length; i++) asked[i] = new Guid(AuditPolicy.Subcategories[i]);
            IntPtr buffer;
            if (!AuditQuerySystemPolicy(asked, (uint)asked.Length, out buffer))
                throw AuditPolicy.Failure("AuditQuerySystemPolicy", Marshal.GetLastWin32Error());
            try
            {
                return Read(buffer, AuditPolicy.Subcategories);
            }
            finally
            {
                AuditFree(buffer);  // the buffer is the caller's to free with AuditFree (AuditQuerySystemPolicy docs)
            }
        }

        /// <summary>
        /// The buffer AuditQuerySystemPolicy returns, one AUDIT_POLICY_INFORMATION per GUID asked, in the order asked.
        /// Its documentation calls it "a single buffer that contains both an array of pointers to
        /// AUDIT_POLICY_INFORMATION structures and the structures themselves", while callers index the pointer it
        /// gives as the structures one after the other (ntsecapi.h's PAUDIT_POLICY_INFORMATION). Untested on a host
        /// here, so both are read: the structures in a row first, then an array of pointers, followed only where each
        /// points inside the buffer's own span. Whichever names the subcategories asked, in order, is the answer; a
        /// buffer neither reading explains is refused rather than read as a setting.
        /// </summary>
        public static Hashtable Read(IntPtr buffer, string[] asked)
        {
            int size = Marshal.SizeOf(typeof(AuditPolicyInformation));
            long start = buffer.ToInt64(), pointers = (long)asked.Length * IntPtr.Size;
            Hashtable flags = ReadEntries(asked, delegate(int i) { return new IntPtr(start + (long)i * size); });
            if (flags != null) return flags;
            flags = ReadEntries(asked, delegate(int i)
            {
                long entry = Marshal.ReadIntPtr(buffer, i * IntPtr.Size).ToInt64();
                bool inside = entry >= start + pointers && entry + size <= start + pointers + (long)asked.Length * size;
                return inside ? new IntPtr(entry) : IntPtr.Zero;
            });
            if (flags != null) return flags;
            throw new InvalidOperationException(string.Format(CultureInfo.InvariantCulture,
                "AuditQuerySystemPolicy answered with entries that do not name {0} in the order asked: the audit policy is not read",
                string.Join(", ", asked)));
        }

        /// <summary>GUID -> flags of the entries at each address where (null when one is missing or names another subcategory).</summary>
        private static Hashtable ReadEntries(string[] asked, Func<int, IntPtr> where)
        {
            Hashtable flags = new Hashtable(StringComparer.OrdinalIgnoreCase);
            for (int i = 0; i < asked.Length; i++)
            {
                IntPtr address = where(i);
                if (address == IntPtr.Zero) return null;
                AuditPolicyInformation entry = (AuditPolicyInformation)Marshal.PtrToStructure(address, typeof(AuditPolicyInformation));
                if (entry.AuditSubCategoryGuid != new Guid(asked[i])) return null;
                flags[asked[i]] = entry.AuditingInformation;
            }
            return flags;
        }

        /// <summary>Sets each subcategory of plan (GUID -> flags), in the calls SetSteps gives; nothing else is touched.</summary>
        public static void Set(IDictionary plan)
        {
            if (plan.Count == 0) return;
            foreach (Hashtable step in AuditPolicy.SetSteps(Query(), plan))
            {
                List<AuditPolicyInformation> entries = new List<AuditPolicyInformation>();
                foreach (string guid in AuditPolicy.Subcategories)
                {
                    if (!step.Contains(guid)) continue;
                    AuditPolicyInformation entry = new AuditPolicyInformation();
                    entry.AuditSubCategoryGuid = new Guid(guid);
                    entry.AuditingInformation = (uint)Values.U64(step[guid]);
                    entries.Add(entry);
                }
                if (!AuditSetSystemPolicy(entries.ToArray(), (uint)entries.Count))
                    throw AuditPolicy.Failure("AuditSetSystemPolicy", Marshal.GetLastWin32Error());
            }
        }
    }

    /// <summary>The host's interfaces and the socket calls of the probe: the only parts of the probe that touch the host.</summary>
    public static class Host
    {
        public static List<Hashtable> Interfaces()
        {
            List<Hashtable> found = new List<Hashtable>();
            foreach (System.Net.NetworkInformation.NetworkInterface nic in System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces())
            {
                List<string> addresses = new List<string>();
                foreach (System.Net.NetworkInformation.UnicastIPAddressInformation a in nic.GetIPProperties().UnicastAddresses)
                    addresses.Add(a.Address.ToString().Split('%')[0]);
                Hashtable i = new Hashtable();
                i["alias"] = nic.Name;
                i["status"] = nic.OperationalStatus.ToString();
                i["loopback"] = nic.NetworkInterfaceType == System.Net.NetworkInformation.NetworkInterfaceType.Loopback;
                i["addresses"] = addresses.ToArray();
                found.Add(i);
            }
            return found;
        }

        // A minimal query for the root's NS records, as a resolver would be asked.
        private static readonly byte[] DnsQuery = { 0x76, 0x67, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1 };

        /// <summary>
        /// Runs the checks Plan gave that have no verdict yet: each gets "error", "bind_failed" and "local_port"
        /// for ProbeVerdict.Judge. Sends only to the checks' destinations (the canaries).
        /// </summary>
        public static void Run(IEnumerable checks)
        {
            foreach (Hashtable c in checks)
            {
                if (c.ContainsKey("verdict")) continue;
                IPAddress destination = IPAddress.Parse(Values.Str(c["destination"]));
                bool tcp = Values.Str(c["kind"]) == "tcp";
                System.Net.Sockets.Socket s = new System.Net.Sockets.Socket(destination.AddressFamily,
                    tcp ? System.Net.Sockets.SocketType.Stream : System.Net.Sockets.SocketType.Dgram,
                    tcp ? System.Net.Sockets.ProtocolType.Tcp : System.Net.Sockets.ProtocolType.Udp);
                c["error"] = 0;
                c["bind_failed"] = false;
                c["local_port"] = 0;
                try
                {
                    string source = Values.Str(c["source"]);
                    try
                    {
                        s.Bind(new IPEndPoint(source == "" ? (destination.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork
                            ? IPAddress.Any : IPAddress.IPv6Any) : IPAddress.Parse(source), 0));
                        c["local_port"] = ((IPEndPoint)s.LocalEndPoint).Port;
                    }
                    catch (System.Net.Sockets.SocketException e)
                    {
                        c["error"] = e.ErrorCode;
                        c["bind_failed"] = true;
                        continue;
                    }
                    s.Blocking = false;
                    IPEndPoint to = new IPEndPoint(destination, (int)Values.U64(c["port"]));
                    try
                    {
                        if (tcp) s.Connect(to);
                        else s.SendTo(Values.Str(c["kind"]) == "dns" ? DnsQuery : Encoding.ASCII.GetBytes("vpnguard-probe"), to);
                    }
                    catch (System.Net.Sockets.SocketException e)
                    {
                        int code = e.ErrorCode;
                        // A non-blocking connect may report its refusal only once it completes: wait for it briefly
                        // (a leaking connect gets no answer from the canary and stays in progress).
                        if (tcp && code == ProbeVerdict.WsaEwouldblock && s.Poll(300000, System.Net.Sockets.SelectMode.SelectError))
                            code = (int)s.GetSocketOption(System.Net.Sockets.SocketOptionLevel.Socket, System.Net.Sockets.SocketOptionName.Error);
                        c["error"] = code;
                    }
                }
                finally
                {
                    s.Close();
                }
            }
        }
    }
}
