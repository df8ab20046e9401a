#!/usr/bin/env python3
"""Regenerate fuzz/seeds/<target>/ from captures/*.frames.tsv (deterministic; run from anywhere).

- apdu_phase3, apdu_phase2: every distinct APDU of every capture, frame header stripped (the
  dialect's own captures first: OXE is Phase II, the others Phase III; the other dialect's
  APDUs share the ROSE/ACSE structure and are useful starting points too); apdu_phase2 also
  the wrapped forms of the Phase II values of unverified shape (SYNTHETIC_PHASE2).
- acse: the distinct ACSE APDUs (AARQ/AARE/RLRQ/RLRE/ABRT, first byte 0x60..0x64).
- framer: each capture's framed stream in pieces of 8 APDUs, in the target's input layout
  (config byte, read-size count, read sizes, stream; see fuzz/src/lib.rs), with the capture's
  framing, and for OXE also behind the Alcatel 'P' preamble.
- engine: hand-encoded scenarios in the byte layout `arbitrary::Unstructured` reads in
  fuzz/src/engine.rs (the whole flow to a binding, with the lock, DTMF and DID variants, an IVR
  request that waits for the PBX's report of the answer, the claim mismatches, the owner's 9 and
  the admin's lift, wrong codes to the lock-out, a restart in flight, a PBX flood), so the fuzzer
  starts from live associations and claimed attempts.
- xml: realistic ECMA-323/354 documents (requests, responses, events, errors, session messages)
  in several shapes (default namespace of several editions, `ns3:` prefixes, no namespace,
  pretty-printed, private data, unknown elements), each framed with the 8-byte header and with
  a trailing NUL (layout in fuzz/src/lib.rs, `xml`), plus streams of several documents.
- link_session: the link's session with each capture's PBX-side APDUs framed one by one,
  interleaved with requests, monitors and answers (layout in fuzz/src/link_session.rs).
"""
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURES = os.path.join(ROOT, "captures")
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


# Hand-written ACSE APDUs (X.227) the captures lack.
SYNTHETIC_ACSE = [
    ("synthetic-rlrq", "62 03 80 01 00"),
    ("synthetic-rlre", "63 03 80 01 00"),
    ("synthetic-abrt", "64 03 80 01 01"),
    # AARQ, context 1.3.12.0.180 (Phase II), charstring password, oldDefinition user information.
    ("synthetic-aarq-password", "60 1e a1 07 06 05 2b 0c 00 81 34 ac 06 80 04 70 61 73 73"
     " be 0b 28 09 a0 07 30 05 03 03 00 08 00"),
    # AARE rejected-permanent, service-user diagnostic authentication-failure.
    ("synthetic-aare-rejected", "61 15 a1 07 06 05 2b 0c 00 81 5a a2 03 02 01 01 a3 05 a1 03 02 01 0d"),
]

# Phase II values of unverified shape (asn1/README.md P8) in their wrapped form, which no capture
# holds: makeCall result (with OXE-style security and private data), clearConnection,
# monitorStop, snapshotDevice and systemStatus arguments, snapshotDevice and no-data results.
SYNTHETIC_PHASE2 = [
    ("synthetic-makecall-result-wrapped", "a2 38 02 01 06 30 33 02 01 0a 30 2e 6b 0a 82 02 2b 7a 83 04 08 b3 01 00"
     " 7e 20 a0 0f 17 0d 32 35 30 33 30 31 31 36 30 37 32 33 5a a1 0d 30 0b 06 06 2b 0c 89 36 83 78 02 01 00"),
    ("synthetic-clearconnection-wrapped", "a1 14 02 01 06 02 01 05 30 0c 6b 0a 82 02 2b 7a 83 04 08 b3 01 00"),
    ("synthetic-monitorstop-wrapped", "a1 0e 02 01 06 02 01 49 30 06 55 04 01 35 f3 03"),
    ("synthetic-snapshotdevice-wrapped", "a1 0f 02 01 06 02 01 4a 30 07 80 05 32 39 37 30 37"),
    ("synthetic-systemstatus-wrapped", "a1 0d 02 01 06 02 01 34 30 05 0a 01 02 7e 00"),
    ("synthetic-snapshot-result-wrapped", "a2 0c 02 01 06 30 07 02 01 4a 30 02 76 00"),
    ("synthetic-nodata-result-wrapped", "a2 0c 02 01 06 30 07 02 01 49 30 02 05 00"),
]


def frames(name):
    out = []
    with open(os.path.join(CAPTURES, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            out.append((int(cols[0]), bytes.fromhex(cols[4])))
    return out


def main():
    names = sorted(n for n in os.listdir(CAPTURES) if n.endswith(".frames.tsv"))
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    written = {}

    def put(target, fname, data):
        d = os.path.join(SEEDS, target)
        os.makedirs(d, exist_ok=True)
        seen = written.setdefault(target, set())
        if data in seen:
            return
        seen.add(data)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)

    apdus = []  # (short name, pdu no, phase2?, apdu bytes)
    for name in names:
        short = name.split("-")[0] + "-" + name.split("-")[2]  # e.g. hipath-session, oxe-events
        siemens = name.startswith("hipath")
        hdr = 3 if siemens else 2
        phase2 = name.startswith("oxe")
        fr = frames(name)
        for no, framed in fr:
            apdus.append((short, no, phase2, framed[hdr:]))
        cfg = 1 if siemens else 0
        cfg |= 2 << 2  # max_frame = DEFAULT_MAX_FRAME
        for i in range(0, len(fr), 8):
            stream = b"".join(f for _, f in fr[i : i + 8])
            reads = bytes([1, 7, 64, 0, 200])
            put("framer", f"{short}-{i // 8:02}", bytes([cfg, len(reads)]) + reads + stream)
            if phase2:
                put("framer", f"{short}-{i // 8:02}-preamble", bytes([cfg | 2, 3, 5, 1, 255]) + b"P" + stream)

    for target, want_p2 in (("apdu_phase3", False), ("apdu_phase2", True)):
        for short, no, p2, a in sorted(apdus, key=lambda x: x[2] != want_p2):
            put(target, f"{short}-{no:03}", a)
    for name, h in SYNTHETIC_PHASE2:
        put("apdu_phase2", name, bytes.fromhex(h.replace(" ", "")))
    for short, no, _, a in apdus:
        if a and 0x60 <= a[0] <= 0x64:
            put("acse", f"{short}-{no:03}", a)
    # The captures hold only AARQ/AARE that succeed: add the other ACSE APDUs by hand.
    for name, h in SYNTHETIC_ACSE:
        put("acse", name, bytes.fromhex(h.replace(" ", "")))
    for name, data in engine_seeds():
        put("engine", name, data)
    for name, data in link_session_seeds(apdus):
        put("link_session", name, data)
    for name, data in xml_seeds():
        put("xml", name, data)
    for t in sorted(written):
        print(f"{t}: {len(written[t])} seeds", file=sys.stderr)


# ---- engine: bytes as fuzz/src/engine.rs reads them (one byte per small choice; a choice
# among one thing reads nothing; a ratio(1, d) is true for a byte b with b % d == 0).
T0 = 0  # time step: none
OP_CREATE, OP_COMPLETE, OP_CANCEL, OP_DONE, OP_EVENT, OP_IVR, OP_HANGUP = 0, 3, 5, 6, 11, 16, 23
OP_LINKDOWN, OP_UNBIND, OP_ADMIN, OP_RESTART, OP_FLOOD, OP_TICK_WAIT, OP_TICK = 24, 25, 26, 27, 28, 29, 30
INITIATED, ORIGINATED, DELIVERED, ESTABLISHED, FAILED, CLEARED = 0, 1, 2, 3, 6, 7
DIAL, DTMF, NONE = 0, 1, 2


def policy(lock=False, completion=False, delivery=DIAL, did=False, calls=3, lockout4=False, ctx_digits=8, block_hour=False, window10=False):
    """The two policy bytes of one PBX (found by search: the fields share bits)."""
    def ok(b):
        return (bool(b & 1) == lock and bool(b & 2) == completion and (b >> 2) % 3 == delivery
                and bool(b & 0x10) == did and 1 + (b >> 5) % 3 == calls and bool(b & 0x80) == lockout4)
    b = next(b for b in range(256) if ok(b))
    b2 = next(b2 for b2 in range(256) if [8, 12, 16][b2 % 3] == ctx_digits and bool(b2 & 4) == block_hour and bool(b2 & 8) == window10)
    return [b, b2]


def policies(p1, p2=None, p2_same_tenant=False):
    return [0 if p2_same_tenant else 1] + p1 + (p2 or policy())


def create(held, account=0, ext=0, code=0, pool=0, dt=T0):
    # not admin; principal t1; account not empty; account; pbx none; extension not 9999; extension;
    # [reuse a live id? no]; code; pool kind (0: fresh); name
    b = [dt, OP_CREATE, 1, 3, 1, account, 3, 1, ext]
    if held:
        b.append(1)
    return b + [code, pool, 1]


def complete(back=0, pool=0, dt=T0):
    return [dt, OP_COMPLETE, 3, 1, back, pool]  # principal t1, not "nope", back, fresh pool


def done(index=None, ok=True, lock=False, dt=T0):
    # [which pending], not a duplicate, ok (then: named, for a lock call) / failure kind
    b = [dt, OP_DONE] + ([] if index is None else [index]) + [1]
    if not ok:
        return b + [0, 2]
    return b + [1] + ([1] if lock else [])


def event(kind, back=0, dt=T0):
    return [dt, OP_EVENT, 0, back, kind]  # on a call the PBX placed, back from the latest


# IVR digits kinds
D_NONE, D_CODE, D_WRONG, D_CONFIRM, D_REFUSE, D_CTX, D_MADE_UP = 0, 1, 5, 6, 8, 10, 14


def ivr(digits, slot=0, frm=0, dt=T0):
    # slot, same platform call, from (0 "", 2 the latest association's DID), digits, to
    b = [dt, OP_IVR, slot, 1, frm, digits]
    if digits == D_CODE:
        b.append(0)  # the latest association's code
    if digits == D_CTX:
        b.append(0)  # the latest context seen
    return b + [0]


def engine_seeds():
    # The whole flow: dial suffix; the IVR call presents the context after the answer.
    flow = policies(policy())
    flow += create(False) + done() + done() + event(INITIATED) + event(ORIGINATED) + event(ESTABLISHED)
    flow += ivr(D_CTX) + ivr(D_CONFIRM) + ivr(D_CODE)
    yield "flow-bound", bytes(flow)
    # Lock first, DTMF delivery (the context leaves in SendDigits), a DID prefix and the right
    # calling number; a wrong code, then the right one.
    lock = policies(policy(lock=True, delivery=DTMF, did=True, ctx_digits=12))
    lock += create(False) + done() + done(lock=True) + event(CLEARED) + done() + event(INITIATED) + event(ESTABLISHED)
    lock += done() + ivr(D_CTX, frm=2) + ivr(D_CONFIRM) + ivr(D_WRONG) + ivr(D_CODE)
    yield "lock-dtmf-did-wrong-then-right", bytes(lock)
    # The IVR request overtakes the PBX's report of the answer: it waits, and Established answers it.
    wait = policies(policy())
    wait += create(False) + done() + done() + event(INITIATED) + ivr(D_CTX)
    wait += [6, 0x01, 0xF3, OP_EVENT, 0, 0, ESTABLISHED]  # 500 ms later
    wait += ivr(D_CONFIRM) + ivr(D_CODE)
    yield "wait-then-established", bytes(wait)
    # It waits in vain: the Tick at its deadline fails the attempt as a mismatch; the retry's
    # IVR call starts too long after the answer (another mismatch); the third is a second call
    # presenting a claimed context.
    late = policies(policy(calls=3), policy(), p2_same_tenant=False)
    late += create(False) + done() + done() + event(INITIATED) + ivr(D_CTX) + [T0, OP_TICK_WAIT, 0]
    late += complete(pool=0) + done(index=1) + event(ESTABLISHED) + [13, 1] + [OP_IVR, 1, 1, 0, D_CTX, 0, 0]  # 31 s later
    yield "wait-timeout-then-late-call", bytes(late)
    # Two IVR calls: the first claims, the second presents the same context (suspected attack);
    # the retry's call is claimed and the owner presses 9 (block); a new request is refused until
    # the admin lifts the block.
    refuse = policies(policy())
    refuse += create(False) + done() + done() + event(ESTABLISHED) + ivr(D_CTX, slot=0) + ivr(D_CTX, slot=1)
    refuse += complete(pool=0) + done(index=1) + event(ESTABLISHED) + ivr(D_CTX, slot=2) + ivr(D_REFUSE, slot=2)
    refuse += create(False)  # refused: blocked by the phone's owner
    refuse += [T0, OP_ADMIN, 0, 0, 0, 0]  # LiftBlocks, scope: account alice of every tenant
    refuse += create(False, dt=15)  # an hour later: alice's share of proof calls is back
    yield "second-call-then-refused", bytes(refuse)
    # The claiming call reaches the code prompt, a second call presents the context (mismatch);
    # after the retry's answer, the first call (which claimed the old attempt, not this one)
    # keys the code: no_longer_valid, never a binding.
    stale = policies(policy())
    stale += create(False) + done() + done() + event(ESTABLISHED) + ivr(D_CTX, slot=0) + ivr(D_CONFIRM, slot=0)
    stale += ivr(D_CTX, slot=1) + complete(pool=0) + done(index=1) + event(ESTABLISHED) + ivr(D_CODE, slot=0)
    yield "old-claimer-enters-code", bytes(stale)
    # Wrong codes to the lock-out (limit 4) over two calls, the admin's reset of the extension's
    # counters (alice stays locked out by her account's), bob's request, a restart in flight.
    wrong = policies(policy(completion=True, lockout4=True))
    wrong += create(False) + complete() + done() + done() + event(ESTABLISHED)
    wrong += ivr(D_CTX) + ivr(D_CONFIRM) + ivr(D_WRONG) + ivr(D_WRONG) + ivr(D_WRONG) + complete() + done(index=1) + event(ESTABLISHED)
    wrong += ivr(D_CTX, slot=1) + ivr(D_CONFIRM, slot=1) + ivr(D_WRONG, slot=1)
    wrong += [T0, OP_ADMIN, 1, 0, 0, 1]  # ResetCounters of p1/2001 (alice's account counter stays)
    wrong += create(False) + create(False, account=1, ext=1) + done(0) + [T0, OP_RESTART] + [14, 0, 0, OP_TICK]
    yield "wrong-codes-lockout-reset-restart", bytes(wrong)
    # No context delivered: the IVR finds the attempt by the calling number (the DID); a call
    # from another number finds nothing.
    did = policies(policy(delivery=NONE, did=True))
    did += create(False, ext=1) + done() + done() + event(ESTABLISHED) + [T0, OP_IVR, 1, 1, 4, 0, D_NONE, 0]  # from 2001's DID
    did += ivr(D_NONE, frm=2) + ivr(D_CONFIRM) + ivr(D_CODE)
    yield "did-lookup-bound", bytes(did)
    # A PBX that repeats an event about the proof call: the attempt fails as pbx_flood.
    flood = policies(policy())
    flood += create(False) + done() + done() + event(INITIATED) + [T0, OP_FLOOD, 220, 2] + [T0, OP_TICK]
    yield "pbx-flood", bytes(flood)


# ---- link_session: the layout of fuzz/src/link_session.rs.
def link_session_seeds(apdus):
    by = {}
    for short, no, p2, a in apdus:
        by.setdefault((short, p2), []).append(a)
    for (short, p2), lst in sorted(by.items()):
        siemens = short.startswith("hipath")
        cfg = (1 if siemens else 0) | (2 if p2 else 0) | (4 if p2 else 0)
        b = [cfg, 4, 0, 3, 0, 6, 0, 2, 0, 0]  # monitor 2001, request MakeCall, settle, answer
        for a in lst[2:14]:
            if len(a) <= 255 and a and not (0x60 <= a[0] <= 0x64):
                b += [1, len(a)] + list(a)
        b += [2, 0, 0, 5, 0, 7, 3, 1, 6, 3]  # answer, drop the monitor, keep-alive, request, time out
        yield f"{short}", bytes(b)
    # Framing errors and raw pieces.
    yield "raw-split-frame", bytes([0, 3, 0, 0, 3, 0x00, 0x05, 0xA1, 0, 5, 0x03, 0x02, 0x01, 0x01, 0x02, 2, 0, 0])
    yield "framing-error", bytes([1, 3, 0, 0, 4, 0x27, 0x00, 0x00, 0x00, 6, 3])
    yield "rlrq", bytes([0, 3, 0, 1, 5, 0x62, 0x03, 0x80, 0x01, 0x00, 6, 3])


# ---- xml: byte 0 = framing (bit 0: 0 xml-header, 1 xml-nul) and edition (bits 1-2), then the stream.
NS = "http://www.ecma-international.org/standards/ecma-323/csta/"
APPL = "http://www.ecma-international.org/standards/ecma-354/appl_session"
CONN = "<callID>FF000100000000004A7F8F4F3C0E0000</callID><deviceID typeOfNumber=\"explicitPublic:subscriber\">N&lt;302118840100&gt;;noa=nk</deviceID>"
PRIV = "<extensions><privateData><private><osc:SiemensPrivate xmlns:osc=\"urn:siemens\"><osc:callType>voice</osc:callType></osc:SiemensPrivate></private></privateData></extensions>"
XML_DOCS = [
    ("0001", "MakeCall", "<callingDevice typeOfNumber=\"explicitPublic:subscriber\">2005</callingDevice><calledDirectoryNumber>0800123</calledDirectoryNumber><autoOriginate>prompt</autoOriginate>"),
    ("0001", "MakeCallResponse", f"<callingDevice>{CONN}</callingDevice>"),
    ("0002", "MonitorStart", "<monitorObject><deviceObject>2005</deviceObject></monitorObject><requestedMonitorFilter><callcontrol><delivered>true</delivered></callcontrol></requestedMonitorFilter>"),
    ("0002", "MonitorStartResponse", "<monitorCrossRefID>1234567</monitorCrossRefID><actualMonitorFilter><callcontrol/></actualMonitorFilter>"),
    ("9999", "ServiceInitiatedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><initiatedConnection>{CONN}</initiatedConnection><initiatingDevice><deviceIdentifier>2005</deviceIdentifier></initiatingDevice><localConnectionInfo>initiated</localConnectionInfo><cause>newCall</cause>"),
    ("9999", "OriginatedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><originatedConnection>{CONN}</originatedConnection><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause>"),
    ("9999", "DeliveredEvent", f"<monitorCrossRefID>77</monitorCrossRefID><connection>{CONN}</connection><alertingDevice><deviceIdentifier>0800</deviceIdentifier></alertingDevice><callingDevice><notKnown/></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><lastRedirectionDevice><numberDialed>0800</numberDialed></lastRedirectionDevice><localConnectionInfo>alerting</localConnectionInfo><cause>newCall</cause>"),
    ("9999", "EstablishedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><establishedConnection>{CONN}</establishedConnection><answeringDevice><deviceIdentifier>0800</deviceIdentifier></answeringDevice><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>"),
    ("9999", "ConnectionClearedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><droppedConnection>{CONN}</droppedConnection><releasingDevice><deviceIdentifier>2005</deviceIdentifier></releasingDevice><localConnectionInfo>null</localConnectionInfo><cause>normalClearing</cause>"),
    ("9999", "FailedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><failedConnection>{CONN}</failedConnection><failingDevice><deviceIdentifier>0800</deviceIdentifier></failingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>fail</localConnectionInfo><cause>busy</cause>"),
    ("9999", "NetworkReachedEvent", f"<monitorCrossRefID>77</monitorCrossRefID><outboundConnection>{CONN}</outboundConnection><networkInterfaceUsed><deviceIdentifier>T1</deviceIdentifier></networkInterfaceUsed><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>normal</cause>"),
    ("9999", "AgentLoggedOnEvent", "<monitorCrossRefID>77</monitorCrossRefID><agentDevice><deviceIdentifier>2005</deviceIdentifier></agentDevice><agentID>42</agentID>"),
    ("0003", "CSTAErrorCode", "<operation>invalidCallID</operation>"),
    ("0003", "CSTAErrorCode", "<systemResourceAvailibility>resourceBusy</systemResourceAvailibility>"),
    ("0003", "CSTAErrorCode", "<privateErrorCode><vendor>x</vendor></privateErrorCode>"),
    ("0004", "SystemStatus", "<systemStatus>normal</systemStatus>"),
    ("0004", "SystemStatusResponse", ""),
    ("0005", "ClearConnection", f"<connectionToBeCleared>{CONN}</connectionToBeCleared>"),
    ("0006", "SystemRegister", "<requestTypes><systemStatus>true</systemStatus></requestTypes>"),
]
XML_SESSION = [
    ("0007", "StartApplicationSession", "<applicationInfo><applicationID>cstagate</applicationID><applicationSpecificInfo><SessionLoginInfo><userName>gw</userName><password>s&amp;cret</password></SessionLoginInfo></applicationSpecificInfo></applicationInfo><requestedProtocolVersions><protocolVersion>" + NS + "ed4</protocolVersion></requestedProtocolVersions><requestedSessionDuration>180</requestedSessionDuration>"),
    ("0007", "StartApplicationSession", "<applicationInfo><applicationID>cstagate</applicationID><applicationSpecificInfo><user>gw</user><password>pw</password></applicationSpecificInfo></applicationInfo><requestedProtocolVersions><protocolVersion>" + NS + "ed6</protocolVersion></requestedProtocolVersions>"),
    ("0007", "StartApplicationSessionPosResponse", "<sessionID>S-4711</sessionID><actualProtocolVersion>" + NS + "ed4</actualProtocolVersion><actualSessionDuration>180</actualSessionDuration>"),
    ("0007", "StartApplicationSessionNegResponse", "<errorCode><definedError>invalidApplicationInfo</definedError></errorCode>"),
    ("0008", "ResetApplicationSessionTimer", "<sessionID>S-4711</sessionID><requestedSessionDuration>180</requestedSessionDuration>"),
    ("0008", "ResetApplicationSessionTimerPosResponse", "<actualSessionDuration>180</actualSessionDuration>"),
    ("9999", "ApplicationSessionTerminated", "<sessionID>S-4711</sessionID><sessionTermReason><definedTermReason>invalidSessionID</definedTermReason></sessionTermReason>"),
]


def xml_shapes(root, members, ns_uri):
    """The shapes PBXs send: default namespace of an edition, pretty-printed, old ecma.ch URI,
    ns3: prefixes, no namespace with private data, an unknown element first."""
    pref = members.replace("</", "\x01").replace("<", "<ns3:").replace("\x01", "</ns3:")
    pretty = members.replace("><", ">\n  <")
    ed = ns_uri or NS + "ed4"
    yield "ed4", f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{ed}">{members}</{root}>'
    yield "pretty-ed6", f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}\n  xmlns="{ns_uri or NS + "ed6"}"\n  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n  {pretty}\n</{root}>\n'
    yield "ecma-ch-ed2", f'<{root} xmlns="{ns_uri or "http://www.ecma.ch/standards/ecma-323/csta/ed2"}">{members}</{root}>'
    yield "ns3", f'<ns3:{root} xmlns:ns3="{ed}">{pref}</ns3:{root}>'
    yield "no-ns-private", f"<{root}>{members}{PRIV}</{root}>"
    yield "unknown-first", f'<{root} xmlns="{NS}ed5"><vendorThing a="1"><deep/></vendorThing>{members}</{root}>'


def xml_frame_header(invoke, doc):
    body = invoke.encode() + doc.encode()
    return bytes([0, 0]) + (len(body) + 4).to_bytes(2, "big") + body


def xml_seeds():
    docs = []
    seen = {}
    for invoke, root, members in XML_DOCS + XML_SESSION:
        n = seen[root] = seen.get(root, 0) + 1
        stem = root if n == 1 else f"{root}{n}"
        shapes = list(xml_shapes(root, members, APPL if (invoke, root, members) in XML_SESSION else None))
        for shape, doc in shapes if (invoke, root, members) in XML_DOCS else shapes[:4]:
            docs.append((f"{stem}-{shape}", invoke, doc))
    for k, (name, invoke, doc) in enumerate(docs):
        ed = (k % 4) << 1
        yield f"{name}-header", bytes([ed]) + xml_frame_header(invoke, doc)
        yield f"{name}-nul", bytes([ed | 1]) + doc.encode() + b"\x00"
    # Streams: a session opened, a monitor, a call's events, several frames a read.
    flow = [d for d in docs if d[0].endswith("-ed4")]
    yield "stream-header", bytes([2]) + b"".join(xml_frame_header(i, d) for _, i, d in flow[:12])
    yield "stream-nul", bytes([3]) + b"".join(d.encode() + b"\x00" for _, _, d in flow[:12]) + b"\x00\n\x00"


if __name__ == "__main__":
    main()
