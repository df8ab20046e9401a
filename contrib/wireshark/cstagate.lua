-- cstagate.lua: a Wireshark dissector for CSTA over TCP (ECMA-285 Phase III and ECMA-217/218
-- Phase II), from the cstagate project.
--
-- Install: copy this file to ~/.local/lib/wireshark/plugins/ (Wireshark 3.6 and later; older
-- versions: ~/.wireshark/plugins/), or load it for one run: tshark -X lua_script:cstagate.lua.
--
-- What it does:
-- - framings: the 2-byte big-endian length (Panasonic, Alcatel OXE, Ericsson), Siemens' `0x26`
--   followed by a 2-byte length with its top bit set (HiPath, OpenScape Business), and the
--   Alcatel `'B'`/`'P'` preamble byte that starts an OXE session; APDUs split over TCP segments
--   are reassembled, several in one segment are each shown;
-- - heuristic on the TCP ports of the "Heuristic ports" preference (2555, 7001, 8800, 33333):
--   a stream whose first bytes look like a framed ACSE or ROSE APDU or a CSTA XML message;
--   any other port through Decode As (tshark: -d tcp.port==NNNN,cstagate);
-- - ACSE (AARQ, AARE, RLRQ, RLRE, ABRT) and ROSE (invoke, returnResult, returnError, reject)
--   kinds, invoke ids, operation and event names in the stream's dialect (the "Dialect"
--   preference: automatic from the AARQ's context and user information, else from the first APDU
--   that tells, else Phase II on port 2555 and Phase III elsewhere), monitor cross-reference
--   ids, call ids, device numbers, universalFailure and reject problem names;
-- - every length is checked against what encloses it: a malformed frame or APDU is marked with
--   Wireshark expert info (group Malformed) and its dissection stops there (a bad frame header
--   ends the segment: the stream cannot be resynchronised, as in the codec); the dissector never
--   raises a Lua error on any input;
-- - CSTA XML (ECMA-323) over TCP, with the 8-byte header (`00 00`, length, 4-digit invoke id)
--   or NUL-ended documents: the kind, operation, event, invoke id, cross-reference id and call
--   id from the root element, as `cstagate decode` reads them, and the document handed to
--   Wireshark's XML dissector (but for ECMA-354 session messages, whose login has a password);
-- - the authentication value of an AARQ (the CTI password) is never shown as text.
--
-- The name tables between the GENERATED markers are written from the Rust codec's own tables
-- (src/codec/operation.rs, schemas.rs, names.rs, universal_failure.rs) by
-- `CSTAGATE_WRITE_LUA=1 cargo test --test tools wireshark_tables`; the same test fails when they
-- differ, so the dissector and `cstagate decode` cannot drift apart.

local cstagate = Proto.new("cstagate", "CSTA (cstagate)")

-- BEGIN GENERATED TABLES
-- Written by `CSTAGATE_WRITE_LUA=1 cargo test --test tools wireshark_tables` from the Rust
-- codec's tables; do not edit by hand (the test fails when this block differs from them).
-- Local operation codes (src/codec/operation.rs).
local OPERATIONS = {
    phase3 = {
        [2] = "answerCall",
        [4] = "clearCall",
        [5] = "clearConnection",
        [7] = "consultationCall",
        [9] = "holdCall",
        [10] = "makeCall",
        [14] = "retrieveCall",
        [21] = "cSTAEventReport",
        [50] = "singleStepTransfer",
        [51] = "escape",
        [71] = "monitorStart",
        [72] = "changeMonitorFilter",
        [73] = "monitorStop",
        [74] = "snapshotDevice",
        [211] = "systemStatus",
        [218] = "deflectCall",
        [219] = "dialDigits",
        [232] = "generateDigits",
        [304] = "getAgentState",
    },
    phase2 = {
        [1] = "alternateCall",
        [2] = "answerCall",
        [3] = "callCompletion",
        [4] = "clearCall",
        [5] = "clearConnection",
        [6] = "conferenceCall",
        [7] = "consultationCall",
        [8] = "divertCall",
        [9] = "holdCall",
        [10] = "makeCall",
        [11] = "makePredictiveCall",
        [12] = "queryDevice",
        [13] = "reconnectCall",
        [14] = "retrieveCall",
        [15] = "setFeature",
        [16] = "transferCall",
        [19] = "sendDTMFTones",
        [21] = "cSTAEventReport",
        [51] = "escape",
        [52] = "systemStatus",
        [71] = "monitorStart",
        [72] = "changeMonitorFilter",
        [73] = "monitorStop",
        [74] = "snapshotDevice",
    },
}
-- Event kinds by "group:alternative" tag numbers of EventSpecificInfo (src/codec/schemas.rs);
-- any other is "other".
local EVENTS = {
    phase3 = {
        ["0:1"] = "callCleared",
        ["0:11"] = "networkReached",
        ["0:13"] = "originated",
        ["0:15"] = "retrieved",
        ["0:16"] = "serviceInitiated",
        ["0:17"] = "transferred",
        ["0:2"] = "conferenced",
        ["0:3"] = "connectionCleared",
        ["0:4"] = "delivered",
        ["0:6"] = "diverted",
        ["0:7"] = "established",
        ["0:8"] = "failed",
        ["0:9"] = "held",
        ["1:2"] = "digitsGenerated",
    },
    phase2 = {
        ["0:0"] = "callCleared",
        ["0:1"] = "conferenced",
        ["0:11"] = "retrieved",
        ["0:12"] = "serviceInitiated",
        ["0:13"] = "transferred",
        ["0:2"] = "connectionCleared",
        ["0:3"] = "delivered",
        ["0:4"] = "diverted",
        ["0:5"] = "established",
        ["0:6"] = "failed",
        ["0:7"] = "held",
        ["0:8"] = "networkReached",
        ["0:9"] = "originated",
    },
}
-- universalFailure categories by tag number: explicit [n] { ENUMERATED } (Phase III) and
-- implicit [n] ENUMERATED (Phase II) (src/codec/universal_failure.rs).
local FAILURE_CATEGORIES = {
    explicit = {
        [0] = "operation",
        [1] = "security",
        [2] = "stateIncompatibility",
        [3] = "systemResourceAvailability",
        [4] = "subscribedResourceAvailability",
        [5] = "performanceManagement",
        [6] = "privateData",
        [7] = "unspecified",
    },
    implicit = {
        [1] = "operation",
        [2] = "stateIncompatibility",
        [3] = "systemResourceAvailability",
        [4] = "subscribedResourceAvailability",
        [5] = "performanceManagement",
        [6] = "unspecified",
    },
}
-- universalFailure values per category (src/codec/names.rs).
local UNIVERSAL_FAILURES = {
    operation = {
        [1] = "generic",
        [2] = "requestIncompatibleWithObject",
        [3] = "valueOutOfRange",
        [4] = "objectNotKnown",
        [5] = "invalidCallingDevice",
        [6] = "invalidCalledDevice",
        [7] = "invalidForwardingDestination",
        [8] = "privilegeViolationSpecifiedDevice",
        [9] = "privilegeViolationCalledDevice",
        [10] = "privilegeViolationCallingDevice",
        [11] = "invalidCallID",
        [12] = "invalidDeviceID",
        [13] = "invalidConnectionID",
        [14] = "invalidDestination",
        [15] = "invalidFeature",
        [16] = "invalidAllocationState",
        [17] = "invalidCrossRefID",
        [18] = "invalidObjectType",
        [19] = "securityViolation",
        [23] = "requestIncompatibleWithCallingDevice",
        [24] = "requestIncompatibleWithCalledDevice",
        [50] = "serviceNotSupported",
        [62] = "invalidMonitorObject",
        [98] = "parameterNotSupported",
    },
    security = {
        [0] = "generic",
        [1] = "sequenceNumberViolated",
        [2] = "timeStampViolated",
        [4] = "securityInfoViolated",
    },
    stateIncompatibility = {
        [1] = "generic",
        [2] = "invalidObjectState",
        [3] = "invalidConnectionIDForActiveCall",
        [4] = "noActiveCall",
        [5] = "noHeldCall",
        [6] = "noCallToClear",
        [7] = "noConnectionToClear",
        [8] = "noCallToAnswer",
        [9] = "noCallToComplete",
        [15] = "invalidDeviceState",
        [16] = "connectedCallExists",
        [19] = "invalidCallingDeviceState",
    },
    systemResourceAvailability = {
        [1] = "generic",
        [2] = "resourceBusy",
        [3] = "internalResourceBusy",
        [4] = "resourceOutOfService",
        [5] = "networkBusy",
        [6] = "networkOutOfService",
        [7] = "overallMonitorLimitExceeded",
        [8] = "conferenceMemberLimitExceeded",
        [15] = "deviceOutOfService",
        [18] = "callingDeviceOutOfService",
    },
    subscribedResourceAvailability = {
        [1] = "generic",
        [2] = "objectMonitorLimitExceeded",
        [3] = "trunkLimitExceeded",
        [4] = "outstandingReqLimitExceeded",
    },
    performanceManagement = {
        [1] = "generic",
        [2] = "performanceLimitExceeded",
    },
}
-- X.880 reject problems by problem tag number, then value (src/codec/names.rs).
local REJECT_PROBLEMS = {
    [0] = {
        [0] = "unrecognizedPDU",
        [1] = "mistypedPDU",
        [2] = "badlyStructuredPDU",
    },
    [1] = {
        [0] = "duplicateInvocation",
        [1] = "unrecognizedOperation",
        [2] = "mistypedArgument",
        [3] = "resourceLimitation",
        [4] = "releaseInProgress",
        [5] = "unrecognizedLinkedId",
        [6] = "linkedResponseUnexpected",
        [7] = "unexpectedLinkedOperation",
    },
    [2] = {
        [0] = "unrecognizedInvocation",
        [1] = "resultResponseUnexpected",
        [2] = "mistypedResult",
    },
    [3] = {
        [0] = "unrecognizedInvocation",
        [1] = "errorResponseUnexpected",
        [2] = "unrecognizedError",
        [3] = "unexpectedError",
        [4] = "mistypedParameter",
    },
}
-- EventCause (src/codec/names.rs).
local EVENT_CAUSES = {
    [1] = "activeParticipation",
    [2] = "alternate",
    [3] = "busy",
    [4] = "callBack",
    [5] = "callCancelled",
    [6] = "callForwardImmediate",
    [7] = "callForwardBusy",
    [8] = "callForwardNoAnswer",
    [9] = "callForward",
    [10] = "callNotAnswered",
    [11] = "callPickup",
    [12] = "campOn",
    [13] = "destNotObtainable",
    [14] = "doNotDisturb",
    [15] = "incompatibleDestination",
    [16] = "invalidAccountCode",
    [17] = "keyOperation",
    [18] = "lockout",
    [19] = "maintenance",
    [20] = "networkCongestion",
    [21] = "networkNotObtainable",
    [22] = "newCall",
    [23] = "noAvailableAgents",
    [24] = "override",
    [25] = "park",
    [26] = "overflow",
    [27] = "recall",
    [28] = "redirected",
    [29] = "reorderTone",
    [30] = "resourcesNotAvailable",
    [31] = "silentParticipation",
    [32] = "transfer",
    [33] = "trunksBusy",
    [35] = "blocked",
    [37] = "consultation",
    [39] = "dTMFDigitDetected",
    [44] = "makeCall",
    [48] = "normalClearing",
    [50] = "numberChanged",
    [52] = "singleStepTransfer",
    [60] = "alertTimeExpired",
    [63] = "conference",
    [65] = "destOutOfOrder",
    [69] = "invalidNumberFormat",
    [76] = "networkDialling",
    [77] = "networkOutOfOrder",
    [78] = "normal",
    [81] = "numberUnallocated",
    [85] = "selectedTrunkBusy",
}
-- LocalConnectionState (src/codec/names.rs).
local LOCAL_STATES = {
    [0] = "null",
    [1] = "initiated",
    [2] = "alerting",
    [3] = "connected",
    [4] = "hold",
    [5] = "queued",
    [6] = "fail",
}
-- The codec's frame cap (src/codec/framing.rs) and BER nesting limit (src/codec/ber.rs).
local MAX_FRAME = 16384
local MAX_DEPTH = 32
-- END GENERATED TABLES

-- The APDU kinds, named as `cstagate decode --json` names them.
local KINDS = {
    [0x60] = "aarq", [0x61] = "aare", [0x62] = "rlrq", [0x63] = "rlre", [0x64] = "abrt",
    [0xA1] = "invoke", [0xA2] = "result", [0xA3] = "error", [0xA4] = "reject",
}
local REJECT_KINDS = { [0] = "general", [1] = "invoke", [2] = "returnResult", [3] = "returnError" }
local AARE_RESULTS = { [0] = "accepted", [1] = "rejected-permanent", [2] = "rejected-transient" }
local PHASE3_GROUPS = {
    [0] = "callControlEvents", [1] = "callAssociatedEvents", [2] = "mediaAttachmentEvents",
    [3] = "physicalDeviceFeatureEvents", [4] = "logicalDeviceFeatureEvents",
    [5] = "deviceMaintenanceEvents", [6] = "voiceUnitEvents", [7] = "vendorSpecEvents",
}
local PHASE2_GROUPS = {
    [0] = "callControlEvents", [1] = "featureEvents", [2] = "agentStateEvents",
    [3] = "maintenanceEvents", [4] = "privateEvents", [5] = "voiceUnitEvents",
}
-- Application-class tags of CSTA types, for the BER tree.
local APPLICATION_TAGS = {
    [1] = "callingDevice", [2] = "calledDevice", [3] = "subjectDevice", [4] = "redirectionDevice",
    [5] = "associatedCallingDevice", [6] = "associatedCalledDevice", [7] = "networkCallingDevice",
    [8] = "networkCalledDevice", [9] = "extendedDevice", [11] = "connectionID",
    [14] = "localConnectionInfo", [21] = "crossRefIdentifier", [30] = "extensions",
}
-- Dialects as `cstagate decode --dialect` and the Rust codec name them.
local PHASE2, PHASE3 = "phase2", "phase3"
local OID_PHASE3_INFO = "1.3.12.0.285.200" -- ECMA-285 application context information
local OID_PHASE2_INFO = "1.3.12.0.218.200" -- ECMA-218 application context information
local OID_ECMA180 = "1.3.12.0.180"          -- the context name OXE sends (Phase II)

---------------------------------------------------------------------------------------------
-- Fields, expert info, preferences

local F = {
    framing = ProtoField.string("cstagate.framing", "Framing"),
    frame_len = ProtoField.uint16("cstagate.frame_len", "APDU length"),
    preamble = ProtoField.string("cstagate.preamble", "Alcatel session preamble"),
    dialect = ProtoField.string("cstagate.dialect", "Dialect"),
    kind = ProtoField.string("cstagate.kind", "Kind"),
    invoke_id = ProtoField.int64("cstagate.invoke_id", "Invoke id"),
    linked_id = ProtoField.int64("cstagate.linked_id", "Linked id"),
    opcode = ProtoField.int64("cstagate.opcode", "Operation code"),
    operation = ProtoField.string("cstagate.operation", "Operation"),
    event = ProtoField.string("cstagate.event", "Event"),
    event_group = ProtoField.uint32("cstagate.event_group", "Event group"),
    event_alt = ProtoField.uint32("cstagate.event_alternative", "Event alternative"),
    xref = ProtoField.string("cstagate.xref", "Monitor cross-reference id"),
    call_id = ProtoField.string("cstagate.call_id", "Call id"),
    device = ProtoField.string("cstagate.device", "Device"),
    dynamic = ProtoField.string("cstagate.dynamic_device", "Dynamic device id"),
    cause = ProtoField.string("cstagate.cause", "Event cause"),
    local_state = ProtoField.string("cstagate.local_state", "Local connection state"),
    failure_category = ProtoField.string("cstagate.failure.category", "universalFailure category"),
    failure_value = ProtoField.int64("cstagate.failure.value", "universalFailure value"),
    failure = ProtoField.string("cstagate.failure", "universalFailure"),
    problem_kind = ProtoField.string("cstagate.problem.kind", "Reject problem kind"),
    problem_value = ProtoField.int64("cstagate.problem.value", "Reject problem value"),
    problem = ProtoField.string("cstagate.problem", "Reject problem"),
    context = ProtoField.string("cstagate.context", "Application context"),
    info_ref = ProtoField.string("cstagate.user_info", "User information direct reference"),
    versions = ProtoField.string("cstagate.csta_versions", "CSTA versions"),
    user = ProtoField.string("cstagate.user", "Authentication name"),
    aare_result = ProtoField.string("cstagate.result", "Association result"),
    ber = ProtoField.bytes("cstagate.ber", "BER"),
}
cstagate.fields = F

local E = {
    malformed = ProtoExpert.new("cstagate.malformed", "Malformed CSTA", expert.group.MALFORMED, expert.severity.ERROR),
    preamble = ProtoExpert.new("cstagate.preamble.unexpected", "Alcatel preamble after the start of the stream", expert.group.SEQUENCE, expert.severity.WARN),
    dialect = ProtoExpert.new("cstagate.dialect.chosen", "CSTA dialect chosen", expert.group.PROTOCOL, expert.severity.CHAT),
    bug = ProtoExpert.new("cstagate.bug", "Internal error of the cstagate dissector (please report it)", expert.group.UNDECODED, expert.severity.ERROR),
}
cstagate.experts = { E.malformed, E.preamble, E.dialect, E.bug }

cstagate.prefs.dialect = Pref.enum("Dialect", 0, "CSTA dialect: automatic (the AARQ's context and user information, else the first APDU that tells, else Phase II on port 2555 and Phase III elsewhere), or fixed", {
    { 1, "Automatic", 0 }, { 2, "Phase III (ECMA-285)", 3 }, { 3, "Phase II (ECMA-217/218, Alcatel OXE)", 2 },
}, false)
cstagate.prefs.framing = Pref.enum("Framing", 0, "Frame header before each APDU: automatic (0x26 starts a Siemens header), or fixed", {
    { 1, "Automatic", 0 }, { 2, "2-byte length", 1 }, { 3, "Siemens 0x26", 2 },
}, false)
cstagate.prefs.ports = Pref.range("Heuristic ports", "2555,7001,8800,33333", "TCP ports on which the dissector looks for CSTA by itself (other ports: Decode As)", 65535)
cstagate.prefs.max_frame = Pref.uint("Largest APDU", MAX_FRAME, "A frame announcing more bytes than this is malformed (cstagate's link drops it)")

local tcp_stream_f = Field.new("tcp.stream")
local tcp_seq_f = Field.new("tcp.seq")

---------------------------------------------------------------------------------------------
-- Helpers over one segment's bytes

-- Per TCP stream: the framing and dialect once known (and why).
local streams = {}

local function stream_state(pinfo)
    local fi = tcp_stream_f()
    local key = fi and fi.value or -1
    local st = streams[key]
    if not st then
        st = {}
        streams[key] = st
    end
    return st, key
end

function cstagate.init()
    streams = {}
end

local function port_set()
    local set = {}
    local text = tostring(cstagate.prefs.ports or "")
    for part in text:gmatch("[^,%s]+") do
        local a, b = part:match("^(%d+)%-(%d+)$")
        if a then
            a, b = tonumber(a), tonumber(b)
            if a and b and b - a <= 1024 then
                for p = a, b do set[p] = true end
            end
        else
            local n = tonumber(part)
            if n then set[n] = true end
        end
    end
    return set
end

-- A reader over the bytes of one tvb, with every access checked.
local function bytes_of(tvb)
    local n = tvb:len()
    local s = n > 0 and tvb:raw(0, n) or ""
    return function(i)
        if i < 0 or i >= n then return nil end
        return s:byte(i + 1)
    end, s
end

local function hex(s, i, j)
    return (s:sub(i + 1, j):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

---------------------------------------------------------------------------------------------
-- BER (X.690), bounded like the codec's reader (src/codec/ber.rs)

-- Read one TLV at `pos`, within [pos, limit). Returns a table
-- {start, tag, class, cons, num, cstart, cend, finish} or nil and the reason.
local function read_tlv(b, pos, limit, depth)
    local first = pos < limit and b(pos)
    if not first then return nil, "input ends inside a tag", pos end
    local p = pos + 1
    local class, cons, num = math.floor(first / 64), (math.floor(first / 32) % 2) == 1, first % 32
    if num == 31 then
        num = 0
        while true do
            local c = p < limit and b(p)
            if not c then return nil, "input ends inside a tag", p end
            p = p + 1
            if num > 0x1FFFF then return nil, "tag number too large", pos end
            num = num * 128 + c % 128
            if c < 128 then break end
        end
    end
    local lb = p < limit and b(p)
    if not lb then return nil, "input ends inside a length", p end
    p = p + 1
    local t = { start = pos, tag = first, class = class, cons = cons, num = num, cstart = p }
    if lb == 0x80 then
        if not cons then return nil, "indefinite length on a primitive value", pos end
        if depth + 1 > MAX_DEPTH then return nil, "nesting deeper than " .. MAX_DEPTH .. " levels", pos end
        local q = p
        while true do
            if q + 2 <= limit and b(q) == 0 and b(q + 1) == 0 then
                t.cend, t.finish = q, q + 2
                return t
            end
            if q >= limit then return nil, "indefinite-length value has no end-of-contents marker", pos end
            local inner, why, at = read_tlv(b, q, limit, depth + 1)
            if not inner then return nil, why, at end
            q = inner.finish
        end
    end
    local len = lb
    if lb > 0x80 then
        local n = lb - 0x80
        if n > 4 then return nil, "length field of " .. n .. " octets is not supported", p - 1 end
        if p + n > limit then return nil, "input ends inside a length", p end
        len = 0
        for i = p, p + n - 1 do len = len * 256 + b(i) end
        p = p + n
        t.cstart = p
    end
    if len > limit - p then
        return nil, "length " .. len .. " runs past the end of the enclosing value (" .. (limit - p) .. " bytes left)", pos
    end
    t.cend, t.finish = p + len, p + len
    return t
end

-- The TLVs directly inside a constructed one, in order; nil and the reason on the first bad one.
local function children(b, t, depth)
    local out, q = {}, t.cstart
    if depth + 1 > MAX_DEPTH then return nil, "nesting deeper than " .. MAX_DEPTH .. " levels", t.start end
    while q < t.cend do
        local c, why, at = read_tlv(b, q, t.cend, depth + 1)
        if not c then return nil, why, at end
        out[#out + 1] = c
        q = c.finish
    end
    return out
end

-- A two's-complement INTEGER of 1..8 octets, as the codec reads it: a Lua number up to 6 octets
-- (exact), an Int64 beyond; nil otherwise.
local function integer(b, t)
    if t.cons then return nil end
    local n = t.cend - t.cstart
    if n < 1 or n > 8 then return nil end
    if n > 6 then
        local digits = {}
        for i = t.cstart, t.cend - 1 do digits[#digits + 1] = string.format("%02x", b(i)) end
        local fill = b(t.cstart) >= 128 and "ff" or "00"
        return Int64.fromhex(string.rep(fill, 8 - n) .. table.concat(digits))
    end
    local v = 0
    for i = t.cstart, t.cend - 1 do v = v * 256 + b(i) end
    if b(t.cstart) >= 128 then v = v - 2 ^ (8 * n) end
    return v
end

-- A value for an int64 field.
local function i64(v)
    if type(v) == "number" then return Int64.new(v) end
    return v
end

-- An integer as decimal text (%d: no exponent for large numbers).
local function num(v)
    if type(v) == "number" then return string.format("%d", v) end
    return tostring(v)
end

local function oid_string(b, t)
    if t.cons or t.cend <= t.cstart then return nil end
    local parts, v = {}, 0
    for i = t.cstart, t.cend - 1 do
        local c = b(i)
        v = v * 128 + c % 128
        if c < 128 then
            if #parts == 0 then
                local first = v < 80 and math.floor(v / 40) or 2
                parts[1] = tostring(first)
                parts[2] = string.format("%d", v - 40 * first)
            else
                parts[#parts + 1] = string.format("%d", v)
            end
            v = 0
        elseif v > 2 ^ 40 then
            return nil
        end
    end
    if v ~= 0 then return nil end
    return table.concat(parts, ".")
end

-- Printable ASCII content (device digits, names), else nil.
local function printable(s, t)
    if t.cons or t.cend <= t.cstart then return nil end
    local text = s:sub(t.cstart + 1, t.cend)
    if text:find("[^\32-\126]") then return nil end
    return text
end

local CLASS_NAMES = { [0] = "UNIVERSAL ", [1] = "APPLICATION ", [2] = "", [3] = "PRIVATE " }

local function tag_text(t)
    if t.class == 0 then
        local u = ({ [1] = "BOOLEAN", [2] = "INTEGER", [3] = "BIT STRING", [4] = "OCTET STRING", [5] = "NULL", [6] = "OBJECT IDENTIFIER", [8] = "EXTERNAL", [10] = "ENUMERATED", [16] = "SEQUENCE", [17] = "SET", [22] = "IA5String", [23] = "UTCTime", [24] = "GeneralizedTime" })[t.num]
        if u then return u end
    end
    local name = t.class == 1 and APPLICATION_TAGS[t.num]
    return "[" .. CLASS_NAMES[t.class] .. t.num .. "]" .. (name and (" " .. name) or "")
end

---------------------------------------------------------------------------------------------
-- One APDU

-- The dissection of one APDU: its bytes, tree, and what the summary says about it.
local Apdu = {}
Apdu.__index = Apdu

function Apdu:malformed(t_or_pos, why)
    local pos = type(t_or_pos) == "table" and t_or_pos.start or t_or_pos or self.base
    if pos < self.base or pos >= self.limit then pos = self.base end
    local len = math.max(1, math.min(self.limit - pos, 16))
    self.tree:add_tvb_expert_info(E.malformed, self.tvb:range(pos, len), "Malformed CSTA: " .. why .. " (APDU offset " .. (pos - self.base) .. ")")
    self.summary[#self.summary + 1] = "[malformed]"
    self.bad = true
    return nil
end

function Apdu:range(t)
    return self.tvb:range(t.start, t.finish - t.start)
end

-- An OCTET STRING-like id shown as hex, as `cstagate decode` shows it.
function Apdu:octets(field, t)
    return self.tree:add(field, self:range(t), hex(self.s, t.cstart, t.cend))
end

function Apdu:kids(t)
    local ks, why, at = children(self.b, t, 2)
    if not ks then return self:malformed(at, why) end
    return ks
end

-- A generic BER tree of `t` under `tree` (bounded by the reader's depth check).
function Apdu:ber_tree(tree, t, depth, hide)
    local label = tag_text(t) .. ", " .. (t.cend - t.cstart) .. " bytes"
    if not t.cons then
        if hide then
            tree:add(self:range(t), label .. ": (hidden)")
            return
        end
        local text = printable(self.s, t)
        local shown = hex(self.s, t.cstart, math.min(t.cend, t.cstart + 32)) .. (t.cend - t.cstart > 32 and "..." or "") .. (text and (" (\"" .. text .. "\")") or "")
        if t.tag == 0x02 or t.tag == 0x0A then local v = integer(self.b, t); if v then shown = num(v) end end
        if t.tag == 0x06 then shown = oid_string(self.b, t) or shown end
        tree:add(self:range(t), label .. ": " .. shown)
        return
    end
    local sub = tree:add(self:range(t), label)
    local ks = children(self.b, t, depth)
    if not ks then return end
    for _, c in ipairs(ks) do self:ber_tree(sub, c, depth + 1, hide or c.tag == 0xAC) end
end

-- Device, connection and call ids anywhere inside `t` (argument, result or event body), by
-- the shapes of ECMA-285 and ECMA-217/218 (asn1/). The first connection's call id is the one
-- `cstagate decode` shows as call_id.
function Apdu:scan_ids(t, depth)
    if depth > MAX_DEPTH or not t.cons then return end
    local ks = children(self.b, t, depth)
    if not ks then return end
    if t.tag == 0x6B then -- ConnectionID
        for _, c in ipairs(ks) do
            if c.tag == 0x80 or c.tag == 0x82 then
                self:call_id(c)
            elseif c.tag == 0x83 then
                self:octets(F.dynamic, c)
            elseif c.tag == 0x30 then
                -- Phase III `both`: SEQUENCE { callID [0], deviceID [1] LocalDeviceID }.
                for _, d in ipairs(children(self.b, c, depth + 1) or {}) do
                    if d.tag == 0x80 then
                        self:call_id(d)
                    elseif d.tag == 0xA1 then
                        self:local_device(d, depth + 2)
                    end
                end
            elseif c.tag == 0xA1 then
                self:local_device(c, depth + 1)
            elseif self.dialect == PHASE2 and c.tag == 0x81 then
                self:device(c)
            end
        end
        return
    end
    for _, c in ipairs(ks) do
        if not c.cons and (c.tag == 0x80 or c.tag == 0x82 or c.tag == 0x84) and (t.tag == 0x30 or (t.class == 1 and t.num <= 9) or t.tag == 0xA3 or t.tag == 0xA5) then
            self:device(c)
        elseif c.tag == 0x0A and self.in_event then
            local v = integer(self.b, c)
            if v then self.tree:add(F.cause, self:range(c), EVENT_CAUSES[v] or num(v)) end
        elseif c.tag == 0x4E then
            local v = integer(self.b, c)
            if v then self.tree:add(F.local_state, self:range(c), LOCAL_STATES[v] or num(v)) end
        elseif c.cons and c.tag ~= 0x7E then
            self:scan_ids(c, depth + 1)
        end
    end
end

-- LocalDeviceID inside [1]: staticID DeviceID (30 { 80 digits ... }) or dynamicID [3].
function Apdu:local_device(t, depth)
    for _, d in ipairs(children(self.b, t, depth) or {}) do
        if d.tag == 0x83 then
            self:octets(F.dynamic, d)
        elseif d.tag == 0x30 then
            self:scan_ids(d, depth + 1)
        end
    end
end

function Apdu:device(c)
    local text = printable(self.s, c)
    if text then
        self.tree:add(F.device, self:range(c), text)
        self.devices[#self.devices + 1] = text
    end
end

function Apdu:call_id(c)
    self:octets(F.call_id, c)
    if not self.call then
        self.call = hex(self.s, c.cstart, c.cend)
    end
end

-- invokeId: INTEGER, or NULL for `absent`.
function Apdu:invoke_id(c)
    if not c then return self:malformed(self.limit - 1, "missing invokeId") end
    if c.tag == 0x02 then
        local v = integer(self.b, c)
        if not v then return self:malformed(c, "bad invokeId") end
        self.tree:add(F.invoke_id, self:range(c), i64(v))
        self.summary[#self.summary + 1] = "id=" .. num(v)
        return true
    elseif c.tag == 0x05 and c.cend == c.cstart then
        return true
    end
    return self:malformed(c, "expected invokeId INTEGER or NULL, found tag " .. string.format("%02X", c.tag))
end

-- An operation code: local INTEGER, named in the dialect, or a global OID.
function Apdu:opcode(c)
    if not c then return self:malformed(self.limit - 1, "missing opcode") end
    if c.tag == 0x02 then
        local v = integer(self.b, c)
        if not v then return self:malformed(c, "bad operation code") end
        local name = OPERATIONS[self.dialect][v] or ("op" .. num(v))
        self.tree:add(F.opcode, self:range(c), i64(v))
        self.tree:add(F.operation, self:range(c), name)
        self.summary[#self.summary + 1] = name
        self.op = v
        return true
    elseif c.tag == 0x06 then
        -- As the codec: a global code is kept as its bytes, and one whose OID does not read
        -- (a last octet with the continuation bit) is named "global:" with nothing after it,
        -- not refused.
        local oid = oid_string(self.b, c) or ""
        self.tree:add(F.operation, self:range(c), "global:" .. oid)
        self.summary[#self.summary + 1] = "global:" .. oid
        return true
    end
    return self:malformed(c, "expected operation code, found tag " .. string.format("%02X", c.tag))
end

function Apdu:event_report(a)
    if a.tag ~= 0x30 then return self:malformed(a, "expected CSTAEventReportArgument SEQUENCE") end
    local ks = self:kids(a)
    if not ks then return end
    local x, info = ks[1], ks[2]
    if not x or x.tag ~= 0x55 or x.cons then return self:malformed(x or a, "expected crossRefIdentifier [APPLICATION 21]") end
    self:octets(F.xref, x)
    if not info or info.class ~= 2 or not info.cons then return self:malformed(info or a, "expected eventSpecificInfo [0..7]") end
    local alts = self:kids(info)
    if not alts then return end
    local alt = alts[1]
    if not alt then return self:malformed(info, "missing event") end
    if alts[2] then return self:malformed(alts[2], "trailing bytes after the event") end
    local name = "other"
    if alt.class == 2 and alt.cons then
        name = EVENTS[self.dialect][info.num .. ":" .. alt.num] or "other"
    end
    local groups = self.dialect == PHASE2 and PHASE2_GROUPS or PHASE3_GROUPS
    local ev = self.tree:add(F.event, self:range(alt), name)
    ev:append_text(" (" .. (groups[info.num] or ("group " .. info.num)) .. " [" .. alt.num .. "])")
    self.tree:add(F.event_group, self:range(info), info.num)
    self.tree:add(F.event_alt, self:range(alt), alt.num)
    self.summary[#self.summary + 1] = name
    if ks[3] and ks[3].tag ~= 0x7E then return self:malformed(ks[3], "expected extensions") end
    self.in_event = true
    self:scan_ids(alt, 3)
end

-- The dialect a ROSE APDU shows, where it tells (as guess_dialect in src/codec/apdu.rs).
function Apdu:dialect_hint(op, arg)
    if op == 52 or op == 19 then return PHASE2, "operation " .. op end
    if op == 211 or op == 232 then return PHASE3, "operation " .. op end
    if not arg or not arg.cons then return nil end
    local ks = children(self.b, arg, 1)
    if not ks or not ks[1] then return nil end
    if op == 21 then
        local info = ks[2]
        local alts = info and info.cons and children(self.b, info, 2)
        local alt = alts and alts[1]
        if not (alt and alt.cons) then return nil end
        local inner = children(self.b, alt, 3)
        if inner and inner[1] and inner[1].tag == 0x30 and #inner == 1 then return PHASE2, "event body tagging" end
        if info.num == 0 and EVENTS[PHASE3]["0:" .. alt.num] then return PHASE3, "event body tagging" end
        return nil
    end
    if op == 71 or op == 10 or op == 74 then
        if ks[1].tag == 0x30 then return PHASE3, "device form" end
        if ks[1].tag == 0x80 or ks[1].tag == 0x81 or ks[1].tag == 0x6B then return PHASE2, "device form" end
    end
    return nil
end

function Apdu:rose(top)
    local ks = self:kids(top)
    if not ks then return end
    if not self:invoke_id(ks[1]) then return end
    if top.tag == 0xA1 then
        local i = 2
        local c = ks[i]
        if c and c.tag == 0x80 then
            local v = integer(self.b, c)
            if not v then return self:malformed(c, "bad linkedId") end
            self.tree:add(F.linked_id, self:range(c), i64(v))
            i = i + 1
        elseif c and c.tag == 0x81 then
            i = i + 1
        end
        local arg = ks[i + 1]
        if self.learn and self.st.dialect == nil and ks[i] and ks[i].tag == 0x02 then
            local d, why = self:dialect_hint(integer(self.b, ks[i]), arg)
            if d then self:choose_dialect(d, why) end
        end
        if not self:opcode(ks[i]) then return end
        if ks[i + 2] then return self:malformed(ks[i + 2], "trailing bytes after the argument") end
        if arg then
            if self.op == 21 then return self:event_report(arg) end
            self:scan_ids(arg, 3)
        end
    elseif top.tag == 0xA2 then
        local seq = ks[2]
        if ks[3] then return self:malformed(ks[3], "trailing bytes after the result") end
        if not seq then return end
        if seq.tag ~= 0x30 then return self:malformed(seq, "expected result SEQUENCE") end
        local rs = self:kids(seq)
        if not rs then return end
        if not self:opcode(rs[1]) then return end
        if rs[3] then return self:malformed(rs[3], "trailing bytes after the result value") end
        if rs[2] then self:scan_ids(rs[2], 4) end
    elseif top.tag == 0xA3 then
        local code, param = ks[2], ks[3]
        if not code or (code.tag ~= 0x02 and code.tag ~= 0x06) then return self:malformed(code or top, "expected error code") end
        local v = code.tag == 0x02 and integer(self.b, code)
        if v then
            self.tree:add(F.opcode, self:range(code), i64(v))
        end
        if ks[4] then return self:malformed(ks[4], "trailing bytes after the error parameter") end
        if v == 1 and param and param.class == 2 then self:universal_failure(param) end
    else
        local pr = ks[2]
        if not pr or pr.cons or pr.class ~= 2 or pr.num > 3 then return self:malformed(pr or top, "expected problem [0..3]") end
        local v = integer(self.b, pr)
        if not v then return self:malformed(pr, "bad problem") end
        if ks[3] then return self:malformed(ks[3], "trailing bytes after the problem") end
        local kind = REJECT_KINDS[pr.num]
        local name = REJECT_PROBLEMS[pr.num][v]
        self.tree:add(F.problem_kind, self:range(pr), kind)
        self.tree:add(F.problem_value, self:range(pr), i64(v))
        self.tree:add(F.problem, self:range(pr), name or num(v))
        self.summary[#self.summary + 1] = kind .. "/" .. (name or num(v))
    end
end

-- universalFailure, either tagging (as the codec: explicit is Phase III's, implicit Phase II's).
function Apdu:universal_failure(p)
    local category, value
    if p.cons then
        category = FAILURE_CATEGORIES.explicit[p.num]
        local ks = self:kids(p)
        if not ks then return end
        local v = ks[1]
        if not v or ks[2] then return self:malformed(p, "bad universalFailure") end
        if v.tag == 0x0A then
            value = integer(self.b, v)
            if not value then return self:malformed(v, "bad universalFailure") end
        elseif v.tag ~= 0x05 then
            return self:malformed(v, "expected ENUMERATED")
        end
    else
        category = FAILURE_CATEGORIES.implicit[p.num]
        if p.cend > p.cstart then
            value = integer(self.b, p)
            if not value then return self:malformed(p, "bad universalFailure") end
        end
    end
    if not category then return end
    local name = value and UNIVERSAL_FAILURES[category] and UNIVERSAL_FAILURES[category][value]
    self.tree:add(F.failure_category, self:range(p), category)
    if value then self.tree:add(F.failure_value, self:range(p), i64(value)) end
    local shown = name or (value and num(value)) or "null"
    self.tree:add(F.failure, self:range(p), category .. "/" .. shown)
    self.summary[#self.summary + 1] = category .. "/" .. shown
end

-- ACSE: the context, CSTA user information and the authentication name; the password never.
function Apdu:acse(top)
    local ks = self:kids(top)
    if not ks then return end
    local context, info_ref, versions
    for _, c in ipairs(ks) do
        if c.tag == 0xA1 then
            local inner = children(self.b, c, 2)
            if inner and inner[1] and inner[1].tag == 0x06 then
                context = oid_string(self.b, inner[1])
                if context then self.tree:add(F.context, self:range(inner[1]), context) end
            end
        elseif c.tag == 0xA2 and top.tag == 0x61 then
            local inner = children(self.b, c, 2)
            local r = inner and inner[1] and integer(self.b, inner[1])
            if r then self.tree:add(F.aare_result, self:range(c), AARE_RESULTS[r] or num(r)) end
        elseif c.tag == 0xAC then
            -- calling-authentication-value: the first printable string is the name (HiPath:
            -- [2] { [0] { [0] { name, password } } }).
            local node, name = c, nil
            for _ = 1, 6 do
                local inner = node.cons and children(self.b, node, 3)
                if not inner or not inner[1] then break end
                if not inner[1].cons then
                    name = printable(self.s, inner[1])
                    break
                end
                node = inner[1]
            end
            if name then self.tree:add(F.user, self:range(c), name) end
        elseif c.tag == 0xBE then
            -- user-information: EXTERNAL { direct-reference OID?, ..., encoding }
            local ext = children(self.b, c, 2)
            local e = ext and ext[1]
            local parts = e and e.tag == 0x28 and children(self.b, e, 3)
            for _, p in ipairs(parts or {}) do
                if p.tag == 0x06 then
                    info_ref = oid_string(self.b, p)
                    if info_ref then self.tree:add(F.info_ref, self:range(p), info_ref) end
                else
                    versions = versions or self:find_versions(p, 4)
                end
            end
            if versions then self.tree:add(F.versions, self:range(c), table.concat(versions, ",")) end
        end
    end
    if self.learn and (top.tag == 0x60 or top.tag == 0x61) then
        local d, why
        if info_ref == OID_PHASE3_INFO then
            d, why = PHASE3, "user information " .. info_ref
        elseif info_ref == OID_PHASE2_INFO then
            d, why = PHASE2, "user information " .. info_ref
        elseif versions and #versions > 0 then
            d, why = (tonumber(versions[#versions]) >= 2) and PHASE3 or PHASE2, "CSTA versions " .. table.concat(versions, ",")
        elseif context == OID_ECMA180 then
            d, why = PHASE2, "context " .. context
        end
        if d and (self.st.dialect_from_acse ~= true) then
            self.st.dialect = nil
            self:choose_dialect(d, why)
            self.st.dialect_from_acse = true
        end
    end
end

-- The CSTA version BIT STRING inside the user information (the first one found): the numbers
-- of its set bits (0 = versionOne ... 2 = versionThree, the first Phase III).
function Apdu:find_versions(t, depth)
    if depth > 8 then return nil end
    if t.tag == 0x03 and t.cend - t.cstart >= 2 then
        local out = {}
        for i = t.cstart + 1, t.cend - 1 do
            local byte = self.b(i)
            for bit = 0, 7 do
                if math.floor(byte / 2 ^ (7 - bit)) % 2 == 1 then out[#out + 1] = tostring((i - t.cstart - 1) * 8 + bit) end
            end
        end
        return out
    end
    if not t.cons then return nil end
    for _, c in ipairs(children(self.b, t, depth) or {}) do
        local v = self:find_versions(c, depth + 1)
        if v then return v end
    end
    return nil
end

function Apdu:choose_dialect(d, why)
    if self.st.dialect then return end
    self.st.dialect, self.st.dialect_why = d, why
    self.dialect = d
end

local dissect_xml

local function dissect_apdu(tvb, pinfo, root, hdr_off, hdr_len, apdu_len, framing, st)
    local base, limit = hdr_off + hdr_len, hdr_off + hdr_len + apdu_len
    local tree = root:add(cstagate, tvb:range(hdr_off, hdr_len + apdu_len))
    tree:add(F.framing, tvb:range(hdr_off, hdr_len), framing)
    tree:add(F.frame_len, tvb:range(hdr_off, hdr_len), apdu_len)
    local b, s = bytes_of(tvb)
    local forced = tonumber(cstagate.prefs.dialect) or 0
    local self = setmetatable({
        tvb = tvb, b = b, s = s, tree = tree, base = base, limit = limit, st = st, summary = {}, devices = {},
        learn = forced == 0 and not pinfo.visited,
    }, Apdu)
    local function dialect_now()
        if forced == 2 then return PHASE2 elseif forced == 3 then return PHASE3 end
        return st.dialect or ((pinfo.src_port == 2555 or pinfo.dst_port == 2555) and PHASE2 or PHASE3)
    end
    self.dialect = dialect_now()
    local top, why, at = read_tlv(b, base, limit, 0)
    if not top then
        self:malformed(at, why)
    elseif top.finish ~= limit then
        self:malformed(top.finish, (limit - top.finish) .. " trailing bytes after the value")
    elseif not KINDS[top.tag] then
        self:malformed(top, "expected ACSE or ROSE APDU, found tag " .. string.format("%02X", top.tag))
    else
        local kind = KINDS[top.tag]
        tree:add(F.kind, tvb:range(base, 1), kind)
        table.insert(self.summary, 1, kind)
        if not top.cons then
            self:malformed(top, kind .. " must be constructed")
        elseif top.tag < 0xA0 then
            self:acse(top)
            self.dialect = dialect_now()
        else
            -- The opcode is named after a ROSE APDU may have taught the stream its dialect.
            local before = self.dialect
            self.learn = self.learn and st.dialect == nil
            self:rose(top)
            if self.dialect ~= before then self.dialect = dialect_now() end
        end
        tree:add(F.dialect, tvb:range(base, 1), self.dialect == PHASE2 and "Phase II" or "Phase III"):set_generated()
        local bt = tree:add(F.ber, tvb:range(base, apdu_len))
        bt:set_text("BER")
        self:ber_tree(bt, top, 0, false)
    end
    if st.dialect_why and not st.dialect_told then
        st.dialect_told = true
        tree:add_proto_expert_info(E.dialect, "CSTA dialect " .. st.dialect .. " (from the " .. st.dialect_why .. ")")
    end
    local text = table.concat(self.summary, " ")
    tree:append_text(": " .. text)
    return text
end

---------------------------------------------------------------------------------------------
-- Frames on the TCP stream

-- The frame header at `off`: hdr_len, apdu_len, framing name; or nil, bytes needed (more
-- data); or false, reason (malformed header).
---------------------------------------------------------------------------------------------
-- CSTA XML (ECMA-323): the root element names the message, as in src/codec/xml/csta.rs

local xml_dissector = Dissector.get("xml")

-- ECMA-354 session messages (src/codec/xml/session.rs).
local XML_SESSION = {}
for _, n in ipairs({ "StartApplicationSession", "StartApplicationSessionPosResponse", "StartApplicationSessionNegResponse",
    "ResetApplicationSessionTimer", "ResetApplicationSessionTimerPosResponse", "ResetApplicationSessionTimerNegResponse",
    "StopApplicationSession", "StopApplicationSessionPosResponse", "StopApplicationSessionNegResponse", "ApplicationSessionTerminated" }) do
    XML_SESSION[n] = true
end

local function capitalized(name) return name:sub(1, 1):upper() .. name:sub(2) end

-- Phase III operations by their XML element name (the event report has none of its own), and
-- event kinds by theirs.
local XML_OPERATIONS, XML_EVENTS = {}, {}
for code, name in pairs(OPERATIONS[PHASE3]) do
    if code ~= 21 then XML_OPERATIONS[capitalized(name)] = { name = name, code = code } end
end
for _, name in pairs(EVENTS[PHASE3]) do XML_EVENTS[capitalized(name) .. "Event"] = name end

-- The text of the first element named `name` (any namespace prefix), trimmed.
local function xml_text(doc, name)
    local text = doc:match("<[%w_%.%-]*:?" .. name .. "%s*>([^<]*)<")
    return text and text:match("^%s*(.-)%s*$")
end

function dissect_xml(tvb, pinfo, root, hdr_off, hdr_len, body_len, framing, s)
    local tree = root:add(cstagate, tvb:range(hdr_off, math.max(1, hdr_len + body_len)))
    tree:add(F.framing, tvb:range(hdr_off, math.max(1, hdr_len)), framing)
    local doc_off, doc_len, summary = hdr_off + hdr_len, body_len, {}
    if framing == "xml-header" then
        local digits = s:sub(doc_off + 1, doc_off + 4)
        tree:add(F.invoke_id, tvb:range(doc_off, 4), Int64.new(tonumber(digits) or 0))
        summary[#summary + 1] = "id=" .. (tonumber(digits) or 0)
        doc_off, doc_len = doc_off + 4, doc_len - 4
    end
    local doc = s:sub(doc_off + 1, doc_off + doc_len)
    -- The root element: after the declaration, comments and processing instructions.
    local at, name = 1, nil
    for _ = 1, 64 do
        local lt = doc:find("<", at, true)
        if not lt then break end
        local nxt = doc:sub(lt + 1, lt + 1)
        if nxt == "?" or nxt == "!" then
            local close = doc:sub(lt, lt + 3) == "<!--" and doc:find("-->", lt + 4, true) or doc:find(">", lt + 1, true)
            if not close then break end
            at = close + 1
        else
            name = doc:match("^<([%w_%.%-:]+)", lt)
            break
        end
    end
    local whole = tvb:range(doc_off, math.max(1, doc_len))
    if not name then
        tree:add_tvb_expert_info(E.malformed, whole, "Malformed CSTA: no XML root element")
        return "[malformed]"
    end
    name = name:match("([^:]+)$")
    local kind, operation, code, event
    local xref, call = xml_text(doc, "monitorCrossRefID"), xml_text(doc, "callID")
    if name == "CSTAErrorCode" then
        kind = "error"
    elseif XML_EVENTS[name] then
        kind, operation, code, event = "invoke", OPERATIONS[PHASE3][21], 21, XML_EVENTS[name]
    elseif name:match("Event$") and xref then
        kind, operation, code, event = "invoke", OPERATIONS[PHASE3][21], 21, "other"
    elseif XML_SESSION[name] then
        kind, operation = "session", name
    elseif name:match("Response$") and XML_OPERATIONS[name:sub(1, -9)] then
        local op = XML_OPERATIONS[name:sub(1, -9)]
        kind, operation, code = "result", op.name, op.code
    elseif XML_OPERATIONS[name] then
        kind, operation, code = "invoke", XML_OPERATIONS[name].name, XML_OPERATIONS[name].code
    else
        kind, operation = "unknown", name
    end
    tree:add(F.kind, whole, kind)
    table.insert(summary, 1, kind)
    if code then tree:add(F.opcode, whole, Int64.new(code)) end
    if operation then
        tree:add(F.operation, whole, operation)
        summary[#summary + 1] = operation
    end
    if event then
        tree:add(F.event, whole, event)
        summary[#summary + 1] = event
    end
    if xref and event then tree:add(F.xref, whole, xref) end
    if call and kind ~= "session" then tree:add(F.call_id, whole, call) end
    -- The document's tree, except for session and unknown messages: a login's password (and a
    -- vendor login's) is never shown as text.
    if xml_dissector and doc_len > 0 and kind ~= "session" and kind ~= "unknown" then
        xml_dissector:call(tvb:range(doc_off, doc_len):tvb(), pinfo, tree)
        pinfo.cols.protocol = "CSTA"
    end
    local text = table.concat(summary, " ")
    tree:append_text(": " .. text)
    return text
end

-- The largest CSTA XML message (the 16-bit length of the XML header; the codec's cap).
local MAX_XML_FRAME = 65535

-- The frame at `off`: hdr_len, body_len, framing name, trailer_len (the NUL of xml-nul); or
-- nil, bytes needed (more data); or false, reason (malformed header). A body of xml-header is
-- the 4 invoke-id digits and the document, as in the codec.
local function frame_header(b, off, avail, st, pinfo, s)
    local b0 = b(off)
    local mode = tonumber(cstagate.prefs.framing) or 0
    local xml = mode == 0 and (st.framing == "xml-header" or st.framing == "xml-nul" or (st.framing == nil and (b0 == 0x3C or b0 == 0xEF or (b0 == 0 and b(off + 1) == 0))))
    if xml then
        local framing = st.framing or ((b0 == 0 and "xml-header") or "xml-nul")
        if framing == "xml-nul" then
            local nul = s:find("\0", off + 1, true)
            if not nul then
                if avail > MAX_XML_FRAME then return false, "no NUL within " .. MAX_XML_FRAME .. " bytes" end
                return nil, 1
            end
            return 0, nul - 1 - off, framing, 1
        end
        if avail < 4 then return nil, 4 - avail end
        if b0 ~= 0 or b(off + 1) ~= 0 then return false, "CSTA XML header must start with 00 00" end
        local whole = b(off + 2) * 256 + b(off + 3)
        if whole < 8 then return false, "CSTA XML length shorter than its 8-byte header" end
        if avail >= 8 and not s:sub(off + 5, off + 8):match("^%d%d%d%d$") then return false, "CSTA XML invoke id must be 4 ASCII digits" end
        return 4, whole - 4, framing, 0
    end
    local siemens = mode == 2 or (mode == 0 and (st.framing == "siemens" or (st.framing == nil and b0 == 0x26)))
    if siemens then
        if b0 ~= 0x26 then return false, "Siemens frame must start with 0x26" end
        if avail < 3 then return nil, 3 - avail end
        local hi, lo = b(off + 1), b(off + 2)
        if hi < 128 then return false, "Siemens length must have its top bit set" end
        return 3, (hi - 128) * 256 + lo, "siemens", 0
    end
    if avail < 2 then return nil, 2 - avail end
    return 2, b(off) * 256 + b(off + 1), "two-byte-length", 0
end

local function dissect(tvb, pinfo, root)
    local total = tvb:len()
    if total == 0 then return 0 end
    local st = stream_state(pinfo)
    local b, s = bytes_of(tvb)
    local off, texts = 0, {}
    pinfo.cols.protocol = "CSTA"
    while off < total do
        local b0 = b(off)
        -- The Alcatel preamble: one byte before the first frame ('B' from the application, 'P'
        -- from the PBX). As a 2-byte length it would announce more than any frame may hold.
        if (b0 == 0x42 or b0 == 0x50) and st.framing ~= "siemens" and (total - off < 2 or (b0 * 256 + b(off + 1)) > max_frame) then
            local tree = root:add(cstagate, tvb:range(off, 1))
            tree:add(F.preamble, tvb:range(off, 1), string.char(b0))
            local seq = tcp_seq_f()
            if off > 0 or (seq and seq.value ~= 1) then
                tree:add_proto_expert_info(E.preamble)
            end
            tree:append_text(": session preamble '" .. string.char(b0) .. "'")
            texts[#texts + 1] = "preamble " .. string.char(b0)
            off = off + 1
        else
            local hdr, n, framing, trailer = frame_header(b, off, total - off, st, pinfo, s)
            local is_xml = framing == "xml-header" or framing == "xml-nul"
            local max_frame = is_xml and MAX_XML_FRAME or (tonumber(cstagate.prefs.max_frame) or MAX_FRAME)
            if hdr == nil then
                if pinfo.can_desegment > 0 then
                    pinfo.desegment_offset = off
                    pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
                    break
                end
                hdr, n = false, "input ends inside a frame header"
            end
            if hdr and n == 0 and framing ~= "xml-nul" then hdr, n = false, "empty frame" end
            if hdr and n > max_frame then hdr, n = false, "frame of " .. n .. " bytes exceeds the cap of " .. max_frame end
            if hdr and off + hdr + n > total and pinfo.can_desegment == 0 then
                hdr, n = false, "frame of " .. n .. " bytes runs past the end of the data (" .. (total - off - hdr) .. " bytes left)"
            end
            if not hdr then
                local tree = root:add(cstagate, tvb:range(off, total - off))
                tree:add_proto_expert_info(E.malformed, "Malformed CSTA frame: " .. n .. " (the stream cannot be resynchronised)")
                tree:append_text(": malformed frame: " .. n)
                texts[#texts + 1] = "[malformed frame]"
                off = total
                break
            end
            if off + hdr + n > total then
                pinfo.desegment_offset = off
                pinfo.desegment_len = off + hdr + n - total
                break
            end
            st.framing = st.framing or framing
            local ok, text
            if is_xml and s:sub(off + hdr + 1, off + hdr + n):match("^%s*$") then
                -- An empty document (a NUL alone): a keep-alive of some servers, skipped.
                ok, text = true, nil
            elseif is_xml then
                ok, text = pcall(dissect_xml, tvb, pinfo, root, off, hdr, n, framing, s)
            else
                ok, text = pcall(dissect_apdu, tvb, pinfo, root, off, hdr, n, framing, st)
            end
            if not ok then
                root:add_proto_expert_info(E.bug, "Internal error of the cstagate dissector: " .. tostring(text))
                text = "[dissector error]"
            end
            texts[#texts + 1] = text
            -- Every frame moves on by at least a byte (its header, body or NUL): no input can
            -- hold the loop in place.
            off = off + math.max(1, hdr + n + trailer)
        end
    end
    if #texts > 0 then
        pinfo.cols.info = table.concat(texts, " | ")
    end
    -- All of it is ours, also when the rest waits for more data: returning less (0 when the
    -- first frame is incomplete) would tell TCP the bytes are not CSTA.
    return total
end

local function dissector(tvb, pinfo, root)
    local ok, res = pcall(dissect, tvb, pinfo, root)
    if ok then return res end
    root:add_proto_expert_info(E.bug, "Internal error of the cstagate dissector: " .. tostring(res))
    return tvb:len()
end
cstagate.dissector = dissector

-- Whether the bytes at `off` start like a framed ACSE or ROSE APDU. A segment too short to
-- tell (an APDU split inside its header) is taken only at the start of the stream.
local function looks_like_csta(b, off, at_start)
    local h = b(off)
    if not h then return at_start end
    -- CSTA XML: the 8-byte header (00 00, length, 4 digits), or a document ended by a NUL.
    if h == 0x3C or h == 0xEF then
        local c = b(off + 1)
        if not c then return at_start end
        return c == 0x3F or c == 0xBB or (c >= 0x41 and c <= 0x5A) or (c >= 0x61 and c <= 0x7A)
    end
    if h == 0 and b(off + 1) == 0 then
        local hi, lo = b(off + 2), b(off + 3)
        if not (hi and lo) then return at_start end
        return hi * 256 + lo >= 8
    end
    local len, tag_at
    if h == 0x26 then
        local hi = b(off + 1)
        if not hi then return at_start end
        if hi < 128 then return false end
        local lo = b(off + 2)
        if not lo then return at_start end
        len, tag_at = (hi - 128) * 256 + lo, off + 3
    else
        local lo = b(off + 1)
        if not lo then return at_start end
        len, tag_at = h * 256 + lo, off + 2
    end
    if len == 0 or len > (tonumber(cstagate.prefs.max_frame) or MAX_FRAME) then return false end
    local tag = b(tag_at)
    if not tag then return at_start end
    return KINDS[tag] ~= nil
end

-- The heuristic: a CSTA port, and bytes that start like a framed ACSE or ROSE APDU (after the
-- Alcatel preamble, or that byte alone).
local function heuristic(tvb, pinfo, root)
    local ports = port_set()
    if not (ports[pinfo.src_port] or ports[pinfo.dst_port]) then return false end
    if tvb:len() < 1 then return false end
    local b = bytes_of(tvb)
    local seq = tcp_seq_f()
    local at_start = seq ~= nil and seq.value == 1
    local off = 0
    if b(0) == 0x42 or b(0) == 0x50 then
        off = 1
        at_start = true
    end
    if not looks_like_csta(b, off, at_start) then return false end
    pinfo.conversation = cstagate
    -- The Lua function itself: `cstagate.dissector` read back is the registered handle, and a
    -- call through it spends the one level of `can_desegment` that reassembly needs.
    dissector(tvb, pinfo, root)
    return true
end

cstagate:register_heuristic("tcp", heuristic)
DissectorTable.get("tcp.port"):add_for_decode_as(cstagate)
