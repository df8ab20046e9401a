#!/usr/bin/env python3
"""Regenerate fuzz/seeds/<target>/ from captures/*.frames.tsv (deterministic; run from anywhere).

- apdu_phase3, apdu_phase2: every distinct APDU of every capture, frame header stripped (the
  dialect's own captures first: OXE is Phase II, the others Phase III; the other dialect's
  APDUs share the ROSE/ACSE structure and are useful starting points too).
- acse: the distinct ACSE APDUs (AARQ/AARE/RLRQ/RLRE/ABRT, first byte 0x60..0x64).
- framer: each capture's framed stream in pieces of 8 APDUs, in the target's input layout
  (config byte, read-size count, read sizes, stream; see fuzz/src/lib.rs), with the capture's
  framing, and for OXE also behind the Alcatel 'P' preamble.
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
    for short, no, _, a in apdus:
        if a and 0x60 <= a[0] <= 0x64:
            put("acse", f"{short}-{no:03}", a)
    # The captures hold only AARQ/AARE that succeed: add the other ACSE APDUs by hand.
    for name, h in SYNTHETIC_ACSE:
        put("acse", name, bytes.fromhex(h.replace(" ", "")))
    for t in sorted(written):
        print(f"{t}: {len(written[t])} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
