#!/usr/bin/env python3
"""Self-check of asn1/*.asn and project.py against real and worked bytes.

For every APDU line of captures/*.frames.tsv (framing removed; dialect phase2
for files whose name contains "oxe", else phase3), for the worked vectors of
section 4.9 of the protocol brief and for a few other vectors, run the
projection in strict mode (every element of the APDU must be matched by a
member of the ASN.1 types) and check it:

  * no error;
  * the framing length agrees with the APDU;
  * ROSE kind / invoke id / opcode and the event agree with the helper label
    of column 6 (event=callControl.<name>; any other group -> "other");
  * the vectors' projections equal the expected ones written below.

Then project.py is run once as a subprocess (stdin/stdout protocol, lenient
mode) over all inputs plus some malformed lines, to check that it answers one
line per input and never stops.

Prints one line per failure and "N passed, M failed"; exit status 1 on any
failure.  Only dependency: asn1tools.
"""

import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True      # keep tests/asn1tools free of __pycache__

import project  # noqa: E402


def h(s):
    return ''.join(s.split()).lower()


def conn(call, device=None, dynamic=None):
    return {'call': call, 'device': device, 'dynamic': dynamic}


# ---------------------------------------------------------------------------
# Worked encodings, protocol brief section 4.9 (2-byte framing included)
# ---------------------------------------------------------------------------
C0102_201 = conn('0102', '201')
VECTORS_4_9 = [
    ('4.9 MonitorStart(201)', 'phase3',
     '00 11 A1 0F 02 01 01 02 01 47 30 07 30 05 80 03 32 30 31',
     {'kind': 'invoke', 'invoke_id': 1, 'opcode': 71, 'fields': {'monitorObject': '201'}}),
    ('4.9 MonitorStartResult', 'phase3',
     '00 12 A2 10 02 01 01 30 0B 02 01 47 30 06 55 04 00 00 00 01',
     {'kind': 'result', 'invoke_id': 1, 'opcode': 71,
      'fields': {'crossRefIdentifier': '00000001'}}),
    ('4.9 MakeCall 201->0123456789', 'phase3',
     '00 22 A1 20 02 01 02 02 01 0A 30 18 30 05 80 03 32 30 31 30 0C 80 0A 30 31 32 33 34 '
     '35 36 37 38 39 83 01 01',
     {'kind': 'invoke', 'invoke_id': 2, 'opcode': 10,
      'fields': {'callingDevice': '201', 'calledDirectoryNumber': '0123456789',
                 'autoOriginate': 1}}),
    ('4.9 MakeCallResult', 'phase3',
     '00 1D A2 1B 02 01 02 30 16 02 01 0A 30 11 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 '
     '32 30 31',
     {'kind': 'result', 'invoke_id': 2, 'opcode': 10, 'fields': {'callingDevice': C0102_201}}),
    ('4.9 EventReport ServiceInitiated', 'phase3',
     '00 34 A1 32 02 01 07 02 01 15 30 2A 55 04 00 00 00 01 A0 22 B0 20 6B 0F 30 0D 80 02 '
     '01 02 A1 07 30 05 80 03 32 30 31 63 07 30 05 80 03 32 30 31 4E 01 01 0A 01 2C',
     {'kind': 'invoke', 'invoke_id': 7, 'opcode': 21, 'event': 'serviceInitiated',
      'xref': '00000001',
      'fields': {'initiatedConnection': C0102_201, 'initiatingDevice': '201',
                 'localConnectionInfo': 1, 'cause': 44}}),
    ('4.9 EventReport Established', 'phase3',
     '00 58 A1 56 02 01 09 02 01 15 30 4E 55 04 00 00 00 01 A0 46 A7 44 6B 0F 30 0D 80 02 '
     '01 02 A1 07 30 05 80 03 32 30 31 63 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 61 '
     '07 30 05 80 03 32 30 31 62 0E 30 0C 80 0A 30 31 32 33 34 35 36 37 38 39 64 02 87 00 '
     '4E 01 03 0A 01 4E',
     {'kind': 'invoke', 'invoke_id': 9, 'opcode': 21, 'event': 'established',
      'xref': '00000001',
      'fields': {'establishedConnection': C0102_201, 'answeringDevice': '0123456789',
                 'callingDevice': '201', 'calledDevice': '0123456789',
                 'lastRedirectionDevice': 'notKnown', 'localConnectionInfo': 3,
                 'cause': 78}}),
    ('4.9 GenerateDigits *1234567#', 'phase3',
     '00 27 A1 25 02 01 03 02 02 00 E8 30 1C 6B 0F 30 0D 80 02 01 02 A1 07 30 05 80 03 32 '
     '30 31 16 09 2A 31 32 33 34 35 36 37 23',
     {'kind': 'invoke', 'invoke_id': 3, 'opcode': 232,
      'fields': {'connectionToSendDigits': C0102_201, 'charactersToSend': '*1234567#'}}),
    ('4.9 SystemStatus (PBX->GW)', 'phase3',
     '00 0E A1 0C 02 01 04 02 02 00 D3 30 03 0A 01 02',
     {'kind': 'invoke', 'invoke_id': 4, 'opcode': 211, 'fields': {'systemStatus': 2}}),
    ('4.9 SystemStatusResult (GW->PBX)', 'phase3',
     '00 0D A2 0B 02 01 04 30 06 02 02 00 D3 05 00',
     {'kind': 'result', 'invoke_id': 4, 'opcode': 211, 'fields': {}}),
    ('4.9 ReturnError invalidDeviceID', 'phase3',
     '00 0D A3 0B 02 01 02 02 01 01 A0 03 0A 01 0C',
     {'kind': 'error', 'invoke_id': 2, 'opcode': 1, 'error_value': [0, 12]}),
    ('4.9 Reject unrecognizedOperation', 'phase3',
     '00 08 A4 06 02 01 05 81 01 01',
     {'kind': 'reject', 'invoke_id': 5, 'problem': [1, 1]}),
    ('4.9 MonitorStop', 'phase3',
     '00 10 A1 0E 02 01 06 02 01 49 30 06 55 04 00 00 00 01',
     {'kind': 'invoke', 'invoke_id': 6, 'opcode': 73,
      'fields': {'crossRefIdentifier': '00000001'}}),
    ('4.9 real OXE (Phase II) MonitorStart', 'phase2',
     '00 11 A1 0F 02 01 01 02 01 47 30 07 80 05 32 39 37 30 37',
     {'kind': 'invoke', 'invoke_id': 1, 'opcode': 71, 'fields': {'monitorObject': '29707'}}),
]

# ---------------------------------------------------------------------------
# Other bytes quoted in the brief (sections 1.2, 3.3, 4.3, 4.7)
# ---------------------------------------------------------------------------
VECTORS_BRIEF = [
    ('1.2 OXE keep-alive systemStatus invoke', 'phase2',
     '00 0C A1 0A 02 02 12 34 02 01 34 0A 01 02',
     {'kind': 'invoke', 'invoke_id': 0x1234, 'opcode': 52, 'fields': {'value': 2}}),
    ('1.2 OXE keep-alive answer', 'phase2',
     '00 0D A2 0B 02 02 12 34 30 05 02 01 34 05 00',
     {'kind': 'result', 'invoke_id': 0x1234, 'opcode': 52, 'fields': {}}),
    ('3.3 OXE AARQ', 'phase2',
     '00 46 60 44 80 02 07 80 A1 07 06 05 2B 0C 00 81 34 BE 35 28 33 06 07 2B 0C 00 81 5A '
     '81 48 A0 28 30 26 03 02 03 C0 30 16 80 04 03 E7 B6 48 81 06 02 5F FD 03 FE A0 83 02 '
     '06 C0 84 02 03 F0 30 08 82 02 03 D8 83 02 06 C0',
     {'kind': 'aarq', 'context': '1.3.12.0.180', 'user': None, 'has_password': False}),
    ('3.3 pyasn1 OXE client minimal AARQ', 'phase2',
     '00 0C 60 0A A1 08 06 06 2B 0C 00 81 34 01',
     {'kind': 'aarq', 'context': '1.3.12.0.180.1', 'user': None, 'has_password': False}),
    ('3.3 Open CSTA HiPath AARQ', 'phase3',
     '00 33 60 31 A1 07 06 05 2B 0C 00 81 5A 8A 02 06 80 AC 15 A2 13 A0 11 A0 0F 04 06 41 '
     '4D 48 4F 53 54 04 05 37 37 37 37 37 BE 0B 28 09 A0 07 A0 05 03 03 00 10 00',
     {'kind': 'aarq', 'context': '1.3.12.0.218', 'user': 'AMHOST', 'has_password': True}),
    ('4.3 AppLink 4 Phase I MakeCall', 'phase2',
     '00 18 A1 16 02 01 06 02 01 0A 30 0E 80 04 31 31 34 34 62 06 80 04 31 31 30 36',
     {'kind': 'invoke', 'invoke_id': 6, 'opcode': 10,
      'fields': {'callingDevice': '1144', 'calledDirectoryNumber': '1106'}}),
    ('4.7 OXE SnapshotDevice', 'phase2',
     '00 0F A1 0D 02 01 03 02 01 4A 80 05 32 39 37 30 37',
     {'kind': 'invoke', 'invoke_id': 3, 'opcode': 74, 'fields': {'value': '29707'}}),
]

# ---------------------------------------------------------------------------
# Synthetic vectors (built here from the ASN.1, not seen on a wire): they
# exercise projection rules that the captures do not reach.
# ---------------------------------------------------------------------------
VECTORS_SYNTHETIC = [
    ('syn Phase III error unspecified [7] NULL', 'phase3',
     '00 0C A3 0A 02 01 02 02 01 01 A7 02 05 00',
     {'kind': 'error', 'invoke_id': 2, 'opcode': 1, 'error_value': [7, None]}),
    ('syn Phase II error operation [1] invalidDeviceID', 'phase2',
     '00 0B A3 09 02 01 02 02 01 01 81 01 0C',
     {'kind': 'error', 'invoke_id': 2, 'opcode': 1, 'error_value': [1, 12]}),
    ('syn Phase II error unspecified [6] NULL', 'phase2',
     '00 0A A3 08 02 01 02 02 01 01 86 00',
     {'kind': 'error', 'invoke_id': 2, 'opcode': 1, 'error_value': [6, None]}),
    ('syn Reject general, absent invokeId', 'phase3',
     '00 07 A4 05 05 00 80 01 01',
     {'kind': 'reject', 'invoke_id': None, 'problem': [0, 1]}),
    ('syn RLRQ normal', 'phase3', '00 05 62 03 80 01 00', {'kind': 'rlrq', 'reason': 0}),
    ('syn RLRE without reason', 'phase3', '00 02 63 00', {'kind': 'rlre', 'reason': None}),
    ('syn ABRT provider', 'phase3', '00 05 64 03 80 01 01', {'kind': 'abrt', 'source': 1}),
    ('syn AARE rejected authentication-failure', 'phase3',
     '00 17 61 15 A1 07 06 05 2B 0C 00 81 5A A2 03 02 01 01 A3 05 A1 03 02 01 0D',
     None),  # expected below (diagnostic)
    ('syn Phase II sendDTMFTones', 'phase2',
     '00 1A A1 18 02 01 08 02 01 13 30 10 6B 08 82 02 2B 91 83 02 01 02 16 04 31 32 33 23',
     {'kind': 'invoke', 'invoke_id': 8, 'opcode': 19,
      'fields': {'connectionToSendDigits': conn('2b91', dynamic='0102'),
                 'charactersToSend': '123#'}}),
    ('syn Phase II makeCall result (bare ConnectionID)', 'phase2',
     '00 15 A2 13 02 01 06 30 0E 02 01 0A 6B 09 82 02 2B 91 80 03 32 30 31',
     {'kind': 'result', 'invoke_id': 6, 'opcode': 10,
      'fields': {'value': conn('2b91', device='201')}}),
    ('syn Phase III digitsGenerated', 'phase3',
     '00 27 A1 25 02 01 0B 02 01 15 30 1D 55 04 00 00 00 01 A1 15 A2 13 6B 0C 30 0A 80 02 '
     '01 02 A1 04 30 02 80 00 16 03 31 32 33',
     {'kind': 'invoke', 'invoke_id': 11, 'opcode': 21, 'event': 'digitsGenerated',
      'xref': '00000001',
      'fields': {'connection': conn('0102', device=''), 'digitGeneratedList': '123'}}),
    ('syn Phase III unknown cause 200 (extensible EventCause)', 'phase3',
     '00 2D A1 2B 02 01 0C 02 01 15 30 23 55 04 00 00 00 01 A0 1B A3 19 6B 06 80 04 30 30 '
     '36 38 63 08 30 06 80 04 32 30 30 35 4E 01 00 0A 02 00 C8',
     {'kind': 'invoke', 'invoke_id': 12, 'opcode': 21, 'event': 'connectionCleared',
      'xref': '00000001',
      'fields': {'droppedConnection': conn('30303638'), 'releasingDevice': '2005',
                 'localConnectionInfo': 0, 'cause': 200}}),
]
VECTORS_SYNTHETIC[7] = VECTORS_SYNTHETIC[7][:3] + (
    {'kind': 'aare', 'context': '1.3.12.0.218', 'result': 1, 'diagnostic': [1, 13]},)

# Must give an error (strict or not)
MALFORMED = [
    ('truncated invoke', 'phase3', 'a10c020101020200d330030a01'),
    ('unknown first tag', 'phase3', '300302010a'),
    ('bad argument for op 211', 'phase3', 'a10a020101020200d3040100'),
]


# ---------------------------------------------------------------------------

def strip_framing(framed_hex, name):
    """Return (apdu_hex, problem or None)."""
    b = bytes.fromhex(framed_hex)
    if 'hipath' in name:
        if len(b) < 3 or b[0] != 0x26 or not b[1] & 0x80:
            return b[3:].hex(), 'bad 0x26 framing header'
        length, body = ((b[1] & 0x7f) << 8) | b[2], b[3:]
    else:
        length, body = (b[0] << 8) | b[1], b[2:]
    if length != len(body):
        return body.hex(), 'framing length {} != APDU length {}'.format(length, len(body))
    return body.hex(), None


LABEL_ROSE = re.compile(r'^(invoke|returnResult) id=(\d+) op=(\d+)')
LABEL_EVENT = re.compile(r'event=(\w+)\.(\S+)')


def expected_from_label(label):
    exp = {}
    first = label.split('|')[0].strip()
    m = LABEL_ROSE.match(first)
    if m:
        exp['kind'] = 'invoke' if m.group(1) == 'invoke' else 'result'
        exp['invoke_id'] = int(m.group(2))
        exp['opcode'] = int(m.group(3))
    elif first.startswith('AARQ'):
        exp['kind'] = 'aarq'
    elif first.startswith('AARE'):
        exp['kind'] = 'aare'
    elif first.startswith('reject'):
        exp['kind'] = 'reject'
    m = LABEL_EVENT.search(label)
    if m:
        group, name = m.group(1), m.group(2)
        known = set(project.KNOWN_EVENTS.values())
        exp['event'] = name if group == 'callControl' and name in known else 'other'
    return exp


def main():
    passed, failed = 0, 0
    inputs = []          # (name, request line) for the subprocess run

    def report(ok, name, message=''):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
            print('FAIL {}: {}'.format(name, message))

    # 1. captures
    files = sorted(glob.glob(os.path.join(ROOT, 'captures', '*.frames.tsv')))
    if not files:
        report(False, 'captures', 'no captures/*.frames.tsv found')
    for path in files:
        fname = os.path.basename(path)
        dialect = 'phase2' if 'oxe' in fname else 'phase3'
        with open(path) as f:
            for line in f:
                if not line.strip() or line.startswith('#'):
                    continue
                cols = line.rstrip('\n').split('\t')
                name = '{}#{}'.format(fname, cols[0])
                apdu, problem = strip_framing(cols[4], fname)
                request = json.dumps({'hex': apdu, 'dialect': dialect})
                inputs.append((name, request))
                out = project.project_line(request, strict=True)
                problems = [problem] if problem else []
                if 'error' in out:
                    problems.append(out['error'])
                else:
                    for key, value in expected_from_label(cols[5] if len(cols) > 5 else '').items():
                        if out.get(key) != value:
                            problems.append('{}={!r}, label says {!r}'.format(key, out.get(key), value))
                report(not problems, name, '; '.join(problems) + '  -> ' + json.dumps(out))

    # 2. vectors
    for name, dialect, framed, expected in VECTORS_4_9 + VECTORS_BRIEF + VECTORS_SYNTHETIC:
        apdu, problem = strip_framing(h(framed), name)
        request = json.dumps({'hex': apdu, 'dialect': dialect})
        inputs.append((name, request))
        out = project.project_line(request, strict=True)
        if problem:
            report(False, name, problem)
        elif out != expected:
            report(False, name, 'got {} expected {}'.format(json.dumps(out, sort_keys=True),
                                                          json.dumps(expected, sort_keys=True)))
        else:
            report(True, name)

    for name, dialect, apdu in MALFORMED:
        request = json.dumps({'hex': apdu, 'dialect': dialect})
        inputs.append((name, request))
        out = project.project_line(request, strict=False)
        report('error' in out, 'malformed ' + name, 'no error: ' + json.dumps(out))

    # 3. project.py as a filter: one line out per line in, never stops
    junk = ['not json', '{"hex": "zz", "dialect": "phase3"}', '',
            '{"hex": "a1", "dialect": "phase9"}', '{"dialect": "phase3"}']
    stdin = '\n'.join([r for _, r in inputs] + junk) + '\n'
    proc = subprocess.run([sys.executable, os.path.join(HERE, 'project.py')],
                          input=stdin, capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    report(proc.returncode == 0, 'project.py exit status',
           '{} {}'.format(proc.returncode, proc.stderr[-500:]))
    report(len(lines) == len(inputs) + len(junk), 'project.py line count',
           '{} lines out for {} in'.format(len(lines), len(inputs) + len(junk)))
    if len(lines) == len(inputs) + len(junk):
        malformed = {'malformed ' + n for n, _, _ in MALFORMED}
        for (name, request), line in zip(inputs, lines):
            out = json.loads(line)
            want_error = ('malformed ' + name) in malformed
            report(('error' in out) == want_error, 'project.py ' + name, line)
        for junk_line, line in zip(junk, lines[len(inputs):]):
            report('error' in json.loads(line), 'project.py junk {!r}'.format(junk_line), line)

    print('{} passed, {} failed'.format(passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
