#!/usr/bin/env python3
"""Reference projection of CSTA APDUs, decoded by asn1tools from asn1/*.asn.

Used as the oracle of the differential test against the Rust codec (see
asn1/README.md).  Only dependency: asn1tools.

Input (stdin): JSON lines {"hex": "<one APDU, framing header removed>",
                           "dialect": "phase3" | "phase2"}
Output (stdout): exactly one JSON line per input line, either the projection
of what asn1tools decoded or {"error": "<message>"}.  Never stops on a bad line.

Options:
  --strict   also reject APDUs in which some element is not matched by any
             member of the ASN.1 type (asn1tools on its own silently skips
             such elements); check_captures.py uses this.

Projection (keys that do not apply are left out):
  kind        aarq|aare|rlrq|rlre|abrt|invoke|result|error|reject
  invoke_id   int, or null for the InvokeId 'absent' alternative
  opcode      invoke: local opcode; result: the opcode in the result SEQUENCE
              (absent if there is none); error: the local errcode.
              (A 'global' OID code is given as its dotted string.)
  fields      for an invoke/result with a known opcode and an argument/result:
              the top-level members of the argument/result SEQUENCE (for an
              event report: of the event body SEQUENCE), projected by
              project_value() below; a non-SEQUENCE argument/result gives
              {"value": <projection>}; NULL / extensions-only results give {}.
  event, xref for cSTAEventReport invokes.
  AARQ: context, user, has_password.  AARE: context, result, diagnostic.
  RLRQ/RLRE: reason.  ABRT: source.
  error:  error_value [tag number of the UniversalFailure alternative, int|null]
  reject: problem [tag number 0..3, int]
"""

import glob
import json
import os
import sys

import asn1tools
from asn1tools.codecs import ber as _ber
from asn1tools.codecs import DecodeError

HERE = os.path.dirname(os.path.abspath(__file__))
ASN1_DIR = os.path.normpath(os.path.join(HERE, '..', '..', 'asn1'))

ROSE = 'Remote-Operations-Generic-ROS-PDUs-CSTA'
ACSE = 'ACSE-1-CSTA'
CSTA_UI = 'CSTA-application-context-information-csta3'
PHASE3 = 'CSTA-Phase3-Subset'
PHASE2 = 'CSTA-Phase2-OXE'

DIALECT_MODULE = {'phase3': PHASE3, 'phase2': PHASE2}

# opcode -> (argument type, result type); None = no type / not decoded
OPERATIONS = {
    'phase3': {
        5: ('ClearConnectionArgument', 'ClearConnectionResult'),
        10: ('MakeCallArgument', 'MakeCallResult'),
        21: ('CSTAEventReportArgument', None),
        51: ('EscapeArgument', 'EscapeResult'),
        71: ('MonitorStartArgument', 'MonitorStartResult'),
        73: ('MonitorStopArgument', 'MonitorStopResult'),
        74: ('SnapshotDeviceArgument', 'SnapshotDeviceResult'),
        211: ('SystemStatusArg', 'SystemStatusRes'),
        232: ('GenerateDigitsArgument', 'GenerateDigitsResult'),
    },
    'phase2': {
        5: ('ClearConnectionArgument', 'ClearConnectionResult'),
        10: ('MakeCallArgument', 'MakeCallResult'),
        19: ('SendDTMFTonesArgument', 'SendDTMFTonesResult'),
        21: ('CSTAEventReportArgument', None),
        51: ('EscapeArgument', 'EscapeResult'),
        52: ('SystemStatusArgument', 'SystemStatusResult'),
        71: ('MonitorStartArgument', 'MonitorStartResult'),
        73: ('MonitorStopArgument', 'MonitorStopResult'),
        74: ('SnapshotDeviceArgument', 'SnapshotDeviceResult'),
    },
}
EVENT_REPORT = 21

# Event bodies that are decoded; any other alternative projects as "other".
KNOWN_EVENTS = {
    ('callControlEvents', 'delivered'): 'delivered',
    ('callControlEvents', 'established'): 'established',
    ('callControlEvents', 'connectionCleared'): 'connectionCleared',
    ('callControlEvents', 'serviceInitiated'): 'serviceInitiated',
    ('callControlEvents', 'originated'): 'originated',
    ('callControlEvents', 'networkReached'): 'networkReached',
    ('callControlEvents', 'callCleared'): 'callCleared',
    ('callControlEvents', 'failed'): 'failed',
    ('callControlEvents', 'held'): 'held',
    ('callControlEvents', 'retrieved'): 'retrieved',
    ('callControlEvents', 'transferred'): 'transferred',
    ('callControlEvents', 'conferenced'): 'conferenced',
    ('callControlEvents', 'diverted'): 'diverted',
    ('callAssociatedEvents', 'digitsGeneratedEvent'): 'digitsGenerated',
}

# Named types projected as a device (digits string or NULL-alternative name)
DEVICE_TYPES = {
    'DeviceID', 'ExtendedDeviceID', 'CallingDeviceID', 'CalledDeviceID',
    'SubjectDeviceID', 'RedirectionDeviceID', 'AssociatedCallingDeviceID',
    'AssociatedCalledDeviceID', 'NetworkCallingDeviceID',
    'NetworkCalledDeviceID', 'LocalDeviceID',
    'OriginatedCallingDevice', 'DivertedNewDestination',   # phase 2 (P2, P3)
}
# Named types never projected (extensions, private data, filters, lists ...)
OMITTED_TYPES = {
    'CSTACommonArguments', 'CSTAPrivateData', 'CSTASecurityData',
    'SecurityInfo', 'MonitorFilter', 'ConnectionList', 'UndecodedEvent',
}
NULL_ALTERNATIVES = {'notKnown', 'restricted', 'notRequired', 'notSpecified'}
STRING_TYPES = {'IA5String', 'GraphicString', 'VisibleString', 'PrintableString',
                'NumericString', 'UTF8String'}

OMIT = object()


# ---------------------------------------------------------------------------
# asn1tools adjustments
# ---------------------------------------------------------------------------

# 1. An unknown value of an extensible ENUMERATED decodes to None in asn1tools;
#    keep the number instead so that it can be projected.
_orig_enum_decode_content = _ber.Enumerated.decode_content


def _enum_decode_content(self, data, offset, length):
    value, end = _orig_enum_decode_content(self, data, offset, length)
    if value is None and self.has_extension_marker:
        value = int.from_bytes(data[offset:offset + length], 'big', signed=True)
    return value, end


_ber.Enumerated.decode_content = _enum_decode_content

# 2. Optional strictness: asn1tools skips elements that no member matches
#    (SEQUENCE) and ignores what follows the inner value of an explicit tag.
STRICT = [False]
_orig_explicit_decode_content = _ber.ExplicitTag.decode_content


def _members_decode_content(self, data, offset, length):
    # same as asn1tools' MembersType.decode_content, plus the strict check
    end_offset = None if length is None else offset + length
    values = {}
    offset, out_of_data = self.decode_members(self.root_members, data, values,
                                              offset, end_offset)
    if self.additions:
        offset, out_of_data = self.decode_members(_ber.flatten(self.additions), data,
                                                  values, offset, end_offset,
                                                  ignore_missing=True)
    if out_of_data:
        return values, offset
    if end_offset is None:
        raise _ber.NoEndOfContentsTagError(
            'Could not find end-of-contents tag for indefinite length field.',
            offset=offset)
    if STRICT[0] and offset < end_offset:
        raise DecodeError('{}: element {} (at offset {}) matches no member'.format(
            self.name, bytes(data[offset:offset + 2]).hex(), offset))
    return values, end_offset


def _explicit_decode_content(self, data, offset, length):
    value, end = _orig_explicit_decode_content(self, data, offset, length)
    if STRICT[0] and length is not None and end != offset + length:
        raise DecodeError('{}: {} unexpected byte(s) inside explicit tag'.format(
            self.name, offset + length - end))
    return value, end


_ber.MembersType.decode_content = _members_decode_content
_ber.ExplicitTag.decode_content = _explicit_decode_content


# ---------------------------------------------------------------------------
# Specification
# ---------------------------------------------------------------------------

def asn1_files():
    return sorted(glob.glob(os.path.join(ASN1_DIR, '*.asn')))


FILES = asn1_files()
SPEC = asn1tools.compile_files(FILES, 'ber')
PARSED = asn1tools.parse_files(FILES)


def type_of(module, name):
    return SPEC.modules[module][name]


def descriptor(module, name):
    return PARSED[module]['types'][name]


def resolve(desc, module):
    """Follow references to named types; return (builtin descriptor, names)."""
    names = []
    types = PARSED[module]['types']
    while desc['type'] in types:
        name = desc['type']
        names.append(name)
        desc = types[name]
    return desc, names


def members(desc):
    return [m for m in desc.get('members', []) if m is not None]


def member(desc, name):
    for m in members(desc):
        if m['name'] == name:
            return m
    raise KeyError(name)


def tag_number(desc, name):
    return member(desc, name)['tag']['number']


def decode(module, name, data):
    """Decode data as one value of module.name; all bytes must be used."""
    value, length = type_of(module, name).decode_with_length(data)
    if length != len(data):
        raise DecodeError('{} trailing byte(s) after {}'.format(len(data) - length, name))
    return value


# ---------------------------------------------------------------------------
# Value projection
# ---------------------------------------------------------------------------

def project_device(value):
    """DeviceID-like value -> digits string, or name of a NULL alternative."""
    while True:
        if isinstance(value, dict):          # phase 3 DeviceID SEQUENCE
            value = value['deviceIdentifier']
            continue
        alt, inner = value
        if alt is None:                      # unknown extension alternative
            return None
        if alt in NULL_ALTERNATIVES:
            return alt
        if alt in ('dialingNumber', 'implicitPublic', 'implicitPrivate'):
            return inner
        if alt == 'deviceNumber':
            return str(inner)
        if alt in ('explicitPublic', 'explicitPrivate'):
            return inner[1]                  # the IA5String of the TON alternative
        if alt in ('other', 'dynamicID'):
            return bytes(inner).hex()
        # wrappers: deviceIdentifier, numberdialed, staticID,
        # subjectDeviceID / callingDeviceID / calledDeviceID (phase 2 P2, P3)
        value = inner


def project_connection(value):
    out = {'call': None, 'device': None, 'dynamic': None}

    def local_device(ld):
        alt, inner = ld
        if alt == 'dynamicID':
            out['dynamic'] = bytes(inner).hex()
        elif alt == 'staticID':
            out['device'] = project_device(inner)

    if isinstance(value, dict):              # phase 2: IMPLICIT SEQUENCE {call, device}
        if 'call' in value:
            out['call'] = bytes(value['call']).hex()
        if 'device' in value:
            local_device(value['device'])
    else:                                    # phase 3: CHOICE {callID, deviceID, both}
        alt, inner = value
        if alt == 'callID':
            out['call'] = bytes(inner).hex()
        elif alt == 'deviceID':
            local_device(inner)
        elif alt == 'both':
            out['call'] = bytes(inner['callID']).hex()
            local_device(inner['deviceID'])
    return out


def project_value(value, desc, module):
    """Projection of one member value of declared type desc, or OMIT."""
    builtin, names = resolve(desc, module)
    for name in names:
        if name in OMITTED_TYPES:
            return OMIT
        if name in DEVICE_TYPES:
            return project_device(value)
        if name == 'ConnectionID':
            return project_connection(value)
        if name == 'MonitorCrossRefID':
            return bytes(value).hex()
        if name in ('CSTAObject', 'MonitorObject'):
            alt, inner = value
            if alt is None:
                return OMIT
            return project_value(inner, member(builtin, alt), module)
    kind = builtin['type']
    if kind == 'ENUMERATED':
        if isinstance(value, int):           # unknown value of an extensible enum
            return value
        if value is None:
            return OMIT
        return dict(v for v in builtin['values'] if v is not None)[value]
    if kind == 'INTEGER':
        return int(value)
    if kind in STRING_TYPES:
        return value
    if kind == 'OCTET STRING':
        return bytes(value).hex()
    return OMIT                              # SEQUENCE, CHOICE, BIT STRING, ANY, ...


def project_fields(value, desc, module):
    """Top-level members of an argument / result / event body."""
    builtin, names = resolve(desc, module)
    special = set(names) & (DEVICE_TYPES | OMITTED_TYPES |
                            {'ConnectionID', 'MonitorCrossRefID', 'CSTAObject', 'MonitorObject'})
    if set(names) & OMITTED_TYPES:
        return {}
    if not special and builtin['type'] in ('SEQUENCE', 'SET'):
        out = {}
        for m in members(builtin):
            if m['name'] in value:
                p = project_value(value[m['name']], m, module)
                if p is not OMIT:
                    out[m['name']] = p
        return out
    if not special and builtin['type'] == 'CHOICE':
        alt, inner = value
        if alt is None:
            return {}
        return project_fields(inner, member(builtin, alt), module)
    if builtin['type'] == 'NULL':
        return {}
    p = project_value(value, desc, module)
    return {} if p is OMIT else {'value': p}


# ---------------------------------------------------------------------------
# APDU projection
# ---------------------------------------------------------------------------

def invoke_id(value):
    alt, inner = value
    return inner if alt == 'present' else None


def code(value):
    alt, inner = value
    return inner if alt == 'local' else str(inner)


def project_event(module, data):
    report = decode(module, 'CSTAEventReportArgument', data)
    out = {'xref': bytes(report['crossRefIdentifier']).hex(), 'event': 'other', 'fields': {}}
    group, inner = report['eventSpecificInfo']
    if group in ('callControlEvents', 'callAssociatedEvents') and inner is not None:
        alt, body = inner
        name = KNOWN_EVENTS.get((group, alt))
        if name is not None:
            group_type = member(descriptor(module, 'EventSpecificInfo'), group)['type']
            body_desc = member(descriptor(module, group_type), alt)
            out['event'] = name
            out['fields'] = project_fields(body, body_desc, module)
    return out


def project_rose(data, dialect):
    module = DIALECT_MODULE[dialect]
    ops = OPERATIONS[dialect]
    kind, body = decode(ROSE, 'ROS', data)
    out = {'invoke_id': invoke_id(body['invokeId'])}
    if kind == 'invoke':
        out['kind'] = 'invoke'
        opcode = code(body['opcode'])
        out['opcode'] = opcode
        argument = body.get('argument')
        if opcode in ops and argument is not None:
            if opcode == EVENT_REPORT:
                out.update(project_event(module, bytes(argument)))
            else:
                type_name = ops[opcode][0]
                value = decode(module, type_name, bytes(argument))
                out['fields'] = project_fields(value, {'type': type_name}, module)
    elif kind == 'returnResult':
        out['kind'] = 'result'
        if 'result' in body:
            opcode = code(body['result']['opcode'])
            out['opcode'] = opcode
            type_name = ops.get(opcode, (None, None))[1]
            if type_name is not None:
                value = decode(module, type_name, bytes(body['result']['result']))
                out['fields'] = project_fields(value, {'type': type_name}, module)
    elif kind == 'returnError':
        out['kind'] = 'error'
        out['opcode'] = code(body['errcode'])
        parameter = body.get('parameter')
        if parameter is not None:
            alt, inner = decode(module, 'UniversalFailure', bytes(parameter))
            uf = descriptor(module, 'UniversalFailure')
            number = tag_number(uf, alt)
            value = project_value(inner, member(uf, alt), module)
            out['error_value'] = [number, None if value is OMIT else value]
    else:
        out['kind'] = 'reject'
        alt, inner = body['problem']
        reject = descriptor(ROSE, 'Reject')
        problem = member(reject, 'problem')
        out['problem'] = [tag_number(problem, alt), int(inner)]
    return out


def authentication(value):
    """(user, has_password) from an AARQ calling-authentication-value."""
    if value is None:
        return None, False
    alt, inner = value
    if alt == 'charstring':
        return None, True
    if alt == 'external' and inner['encoding'][0] == 'single-ASN1-type':
        try:
            info = decode(CSTA_UI, 'CSTAAuthenticationInfo', bytes(inner['encoding'][1]))
        except Exception:
            return None, False
        if info[0] == 'userAndPassword':
            user = bytes(info[1]['userName']).decode('latin-1')
            return user, 'password' in info[1]
    return None, False


def project_acse(data):
    kind, body = decode(ACSE, 'ACSE-apdu', data)
    if kind == 'aarq':
        user, has_password = authentication(body.get('calling-authentication-value'))
        return {'kind': 'aarq', 'context': body['aSO-context-name'],
                'user': user, 'has_password': has_password}
    if kind == 'aare':
        diagnostic = body.get('result-source-diagnostic')
        if diagnostic is not None:
            source = 1 if diagnostic[0] == 'service-user' else 2
            diagnostic = [source, int(diagnostic[1])]
        return {'kind': 'aare', 'context': body['aSO-context-name'],
                'result': int(body['result']), 'diagnostic': diagnostic}
    if kind in ('rlrq', 'rlre'):
        reason = body.get('reason')
        return {'kind': kind, 'reason': None if reason is None else int(reason)}
    return {'kind': 'abrt', 'source': int(body['abort-source'])}


def project(hex_apdu, dialect):
    if dialect not in DIALECT_MODULE:
        raise ValueError('unknown dialect {!r}'.format(dialect))
    data = bytes.fromhex(hex_apdu)
    if not data:
        raise ValueError('empty APDU')
    if 0x60 <= data[0] <= 0x64:
        return project_acse(data)
    if 0xA1 <= data[0] <= 0xA4:
        return project_rose(data, dialect)
    raise ValueError('first tag {:02x} is neither ACSE (60..64) nor ROSE (a1..a4)'.format(data[0]))


def project_line(line, strict=False):
    STRICT[0] = strict
    try:
        request = json.loads(line)
        return project(request['hex'].replace(' ', ''), request.get('dialect', 'phase3'))
    except Exception as e:                   # never stop on one bad input
        return {'error': '{}: {}'.format(type(e).__name__, e)}
    finally:
        STRICT[0] = False


def main(argv):
    strict = '--strict' in argv[1:]
    for line in sys.stdin:
        result = project_line(line, strict)
        sys.stdout.write(json.dumps(result, sort_keys=True) + '\n')
        sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
