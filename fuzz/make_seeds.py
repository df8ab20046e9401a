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
  fuzz/src/engine.rs (the whole flow to a binding, with the lock and DTMF variants, wrong codes,
  a restart in flight), so the fuzzer starts from live associations.
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
    for t in sorted(written):
        print(f"{t}: {len(written[t])} seeds", file=sys.stderr)


# ---- engine: bytes as fuzz/src/engine.rs reads them (one byte per small choice; a choice
# among one thing reads nothing).
T0 = 0  # time step: none
OP_CREATE, OP_COMPLETE, OP_DONE, OP_EVENT, OP_IVR, OP_HANGUP, OP_LINKDOWN, OP_RESTART, OP_TICK = 0, 3, 6, 12, 18, 25, 26, 29, 30


def create(first, account=0, ext=0, code=0, ctx=0):
    # admin? no; principal t1; account; pbx none; extension; [id reuse? no]; code; context; name
    b = [T0, OP_CREATE, 1, 3, 1, account, 3, 1, ext]
    if not first:
        b.append(1)
    return b + [code, ctx, 1]


def done(index=None, ok=True):
    # [which pending], not a duplicate, ok/err (+ failure kind)
    b = [T0, OP_DONE] + ([] if index is None else [index]) + [1]
    return b + ([1] if ok else [0, 2])


def event(kind, back=0):
    return [T0, OP_EVENT, 0, back, kind]  # on a call the PBX placed; Initiated..Cleared = 0..5


def ivr(digits, call=0, extra=()):
    # IVR call, from "", digits kind (0 none, 1 code, 5 wrong, 6 confirm, 9 context), to
    return [T0, OP_IVR, call, 0, digits, *extra, 0]


def engine_seeds():
    flow = [1, 0x00, 0x00]  # p2 of t2; policies: DialSuffix, no lock, completion not required
    flow += create(True) + done() + done() + event(0) + event(1) + event(3)
    flow += ivr(9) + ivr(6) + ivr(1)
    yield "flow-bound", bytes(flow)
    # Lock first, DTMF delivery, a DID prefix: lock call cleared, then the proof call.
    lock = [1, 0x15, 0x00]
    lock += create(True) + done() + done(ok=True) + [1] + event(5) + done() + event(0) + event(3)
    lock += [T0, OP_DONE, 1, 1] + ivr(9) + ivr(6) + ivr(5) + ivr(5) + ivr(1)
    yield "lock-dtmf-wrong-then-right", bytes(lock)
    # Wrong codes until the limit, a retry, a restart in flight, then expiry.
    wrong = [1, 0x02, 0x80]
    wrong += create(True) + [T0, OP_COMPLETE, 3, 0] + done() + done() + event(3)
    wrong += ivr(9) + ivr(6) + ivr(5) + ivr(5) + ivr(5) + [T0, OP_COMPLETE, 3, 0] + done() + event(3)
    wrong += ivr(9, call=1) + ivr(6, call=1) + ivr(5, call=1) + ivr(5, call=1)
    wrong += create(False, account=1, ext=1) + done(0) + [T0, OP_RESTART] + [14, OP_TICK]
    yield "wrong-codes-restart-expiry", bytes(wrong)
    # Two associations, link down, hang-up in the IVR, cancel.
    two = [1, 0x00, 0x08]
    two += create(True) + create(False, account=1, ext=1, code=1, ctx=0) + done(0) + done(0) + done(0)
    two += event(0) + [T0, OP_LINKDOWN, 0] + [T0, OP_COMPLETE, 3, 0] + done(0) + done(0) + event(3)
    two += ivr(9) + ivr(6) + [T0, OP_HANGUP, 0] + [T0, 5, 3, 0] + [13, OP_TICK]
    yield "two-linkdown-hangup-cancel", bytes(two)


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


if __name__ == "__main__":
    main()
