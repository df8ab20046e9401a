/*
 * Decode throughput of the asn1c-generated C decoder on the capture APDUs, side by side with
 * cstagate's `cargo bench --bench codec` (benches/codec.rs). See README.md beside this file.
 *
 * Per APDU it does what `Apdu::decode` does:
 *   1. ber_decode of the ACSE APDU (first byte 0x60..0x64) or of the ROSE PDU (ROS);
 *   2. the second step on the open types, with the type chosen by operation code and dialect:
 *      invoke argument, returnResult result, returnError parameter (universalFailure), the
 *      CSTAEventReportArgument including the event body, and in ACSE the authentication value
 *      of an AARQ (CSTAAuthenticationInfo) and the CSTA user information
 *      (ACSEUserInformationForCSTA) of every EXTERNAL in user-information;
 *      open types that cstagate keeps opaque stay as the ANY bytes asn1c copied
 *      (escape argument and result, snapshotDevice result, operations without a schema such
 *      as getAgentState 304);
 *   3. ASN_STRUCT_FREE of everything decoded.
 * Every ber_decode must return RC_OK and consume all of its bytes; the harness checks every
 * APDU once before timing and stops with exit code 1 on the first failure.
 *
 * Phase III types come from the tree generated from rose.asn + acse.asn + csta-phase3.asn
 * (headers included below); Phase II types from the tree generated from csta-phase2.asn, whose
 * global symbols run.sh renames with a "p2_" prefix (the two modules define the same type
 * names), so only their type descriptors are declared here.
 *
 * Usage: harness CAPTURES_DIR [RUNS [SECONDS_PER_RUN]]
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ROS.h"
#include "ACSE-apdu.h"
#include "CSTAAuthenticationInfo.h"
#include "ACSEUserInformationForCSTA.h"
#include "CSTAEventReportArgument.h"
#include "MonitorStartArgument.h"
#include "MonitorStartResult.h"
#include "MonitorStopArgument.h"
#include "MonitorStopResult.h"
#include "MakeCallArgument.h"
#include "MakeCallResult.h"
#include "ClearConnectionArgument.h"
#include "ClearConnectionResult.h"
#include "GenerateDigitsArgument.h"
#include "GenerateDigitsResult.h"
#include "SnapshotDeviceArgument.h"
#include "SystemStatusArg.h"
#include "SystemStatusRes.h"
#include "UniversalFailure.h"

/* Phase II (csta-phase2.asn), symbols prefixed by run.sh */
extern asn_TYPE_descriptor_t p2_asn_DEF_CSTAEventReportArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_MonitorStartArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_MonitorStartResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_MonitorStopArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_MonitorStopResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_MakeCallArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_MakeCallResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_ClearConnectionArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_ClearConnectionResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_SendDTMFTonesArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_SendDTMFTonesResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_SnapshotDeviceArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_SystemStatusArgument;
extern asn_TYPE_descriptor_t p2_asn_DEF_SystemStatusResult;
extern asn_TYPE_descriptor_t p2_asn_DEF_UniversalFailure;

enum dialect { PHASE3, PHASE2 };

/* Operation code -> argument and result type; NULL = kept opaque (as in src/codec/schemas.rs). */
struct op {
    long code;
    asn_TYPE_descriptor_t *argument;
    asn_TYPE_descriptor_t *result;
};

static const struct op PHASE3_OPS[] = {
    {5, &asn_DEF_ClearConnectionArgument, &asn_DEF_ClearConnectionResult},
    {10, &asn_DEF_MakeCallArgument, &asn_DEF_MakeCallResult},
    {21, &asn_DEF_CSTAEventReportArgument, NULL},
    {51, NULL, NULL}, /* escape: opaque */
    {71, &asn_DEF_MonitorStartArgument, &asn_DEF_MonitorStartResult},
    {73, &asn_DEF_MonitorStopArgument, &asn_DEF_MonitorStopResult},
    {74, &asn_DEF_SnapshotDeviceArgument, NULL}, /* snapshotDevice result: opaque */
    {211, &asn_DEF_SystemStatusArg, &asn_DEF_SystemStatusRes},
    {232, &asn_DEF_GenerateDigitsArgument, &asn_DEF_GenerateDigitsResult},
};

static const struct op PHASE2_OPS[] = {
    {5, &p2_asn_DEF_ClearConnectionArgument, &p2_asn_DEF_ClearConnectionResult},
    {10, &p2_asn_DEF_MakeCallArgument, &p2_asn_DEF_MakeCallResult},
    {19, &p2_asn_DEF_SendDTMFTonesArgument, &p2_asn_DEF_SendDTMFTonesResult},
    {21, &p2_asn_DEF_CSTAEventReportArgument, NULL},
    {51, NULL, NULL}, /* escape: opaque */
    {52, &p2_asn_DEF_SystemStatusArgument, &p2_asn_DEF_SystemStatusResult},
    {71, &p2_asn_DEF_MonitorStartArgument, &p2_asn_DEF_MonitorStartResult},
    {73, &p2_asn_DEF_MonitorStopArgument, &p2_asn_DEF_MonitorStopResult},
    {74, &p2_asn_DEF_SnapshotDeviceArgument, NULL},
};

static const struct op *find_op(enum dialect d, const Code_t *code) {
    const struct op *t = d == PHASE3 ? PHASE3_OPS : PHASE2_OPS;
    size_t n = d == PHASE3 ? sizeof PHASE3_OPS / sizeof *t : sizeof PHASE2_OPS / sizeof *t;
    if (code->present != Code_PR_local) return NULL;
    for (size_t i = 0; i < n; i++)
        if (t[i].code == code->choice.local) return &t[i];
    return NULL;
}

struct apdu {
    uint8_t *buf;
    size_t len;
    enum dialect dialect;
    int is_event; /* invoke of cSTAEventReport (21), set by the check pass */
    char origin[96];
};

static char err[512];

/* One ber_decode that must succeed and consume all `len` bytes; the value is freed at once. */
static int decode_open(asn_TYPE_descriptor_t *td, const uint8_t *buf, size_t len, const char *what) {
    void *v = NULL;
    asn_dec_rval_t rv = ber_decode(NULL, td, &v, buf, len);
    int ok = rv.code == RC_OK && rv.consumed == len;
    ASN_STRUCT_FREE(*td, v);
    if (!ok) {
        snprintf(err, sizeof err, "%s as %s: code %d (0 = RC_OK), consumed %zu of %zu bytes", what, td->name,
                 (int)rv.code, (size_t)rv.consumed, len);
        return -1;
    }
    return 0;
}

static int decode_user_information(const struct Association_data *ui) {
    if (!ui) return 0;
    for (int i = 0; i < ui->list.count; i++) {
        const External_t *e = ui->list.array[i];
        if (e->encoding.present != External__encoding_PR_single_ASN1_type) continue;
        const ANY_t *a = &e->encoding.choice.single_ASN1_type;
        if (decode_open(&asn_DEF_ACSEUserInformationForCSTA, a->buf, (size_t)a->size, "user-information"))
            return -1;
    }
    return 0;
}

static int decode_acse(const struct apdu *p, int *is_event) {
    ACSE_apdu_t *a = NULL;
    asn_dec_rval_t rv = ber_decode(NULL, &asn_DEF_ACSE_apdu, (void **)&a, p->buf, p->len);
    int rc = 0;
    *is_event = 0;
    if (rv.code != RC_OK || rv.consumed != p->len) {
        snprintf(err, sizeof err, "ACSE-apdu: code %d (0 = RC_OK), consumed %zu of %zu bytes", (int)rv.code,
                 (size_t)rv.consumed, p->len);
        rc = -1;
        goto out;
    }
    switch (a->present) {
    case ACSE_apdu_PR_aarq: {
        const Authentication_value_t *auth = a->choice.aarq.calling_authentication_value;
        if (auth && auth->present == Authentication_value_PR_external &&
            auth->choice.external.encoding.present == External__encoding_PR_single_ASN1_type) {
            const ANY_t *v = &auth->choice.external.encoding.choice.single_ASN1_type;
            rc = decode_open(&asn_DEF_CSTAAuthenticationInfo, v->buf, (size_t)v->size, "calling-authentication-value");
        }
        if (!rc) rc = decode_user_information(a->choice.aarq.user_information);
        break;
    }
    /* cstagate keeps the AARE responding-authentication-value raw: no second step for it */
    case ACSE_apdu_PR_aare: rc = decode_user_information(a->choice.aare.user_information); break;
    case ACSE_apdu_PR_rlrq: rc = decode_user_information(a->choice.rlrq.user_information); break;
    case ACSE_apdu_PR_rlre: rc = decode_user_information(a->choice.rlre.user_information); break;
    case ACSE_apdu_PR_abrt: rc = decode_user_information(a->choice.abrt.user_information); break;
    default: break;
    }
out:
    ASN_STRUCT_FREE(asn_DEF_ACSE_apdu, a);
    return rc;
}

static int decode_ros(const struct apdu *p, int *is_event) {
    ROS_t *r = NULL;
    asn_dec_rval_t rv = ber_decode(NULL, &asn_DEF_ROS, (void **)&r, p->buf, p->len);
    int rc = 0;
    *is_event = 0;
    if (rv.code != RC_OK || rv.consumed != p->len) {
        snprintf(err, sizeof err, "ROS: code %d (0 = RC_OK), consumed %zu of %zu bytes", (int)rv.code,
                 (size_t)rv.consumed, p->len);
        rc = -1;
        goto out;
    }
    switch (r->present) {
    case ROS_PR_invoke: {
        const Invoke_t *iv = &r->choice.invoke;
        const struct op *op = find_op(p->dialect, &iv->opcode);
        *is_event = iv->opcode.present == Code_PR_local && iv->opcode.choice.local == 21;
        if (iv->argument && op && op->argument)
            rc = decode_open(op->argument, iv->argument->buf, (size_t)iv->argument->size, "invoke argument");
        break;
    }
    case ROS_PR_returnResult: {
        const ReturnResult_t *rr = &r->choice.returnResult;
        if (rr->result) {
            const struct op *op = find_op(p->dialect, &rr->result->opcode);
            if (op && op->result)
                rc = decode_open(op->result, rr->result->result.buf, (size_t)rr->result->result.size, "result");
        }
        break;
    }
    case ROS_PR_returnError: {
        const ReturnError_t *re = &r->choice.returnError;
        if (re->parameter && re->errcode.present == Code_PR_local && re->errcode.choice.local == 1)
            rc = decode_open(p->dialect == PHASE3 ? &asn_DEF_UniversalFailure : &p2_asn_DEF_UniversalFailure,
                             re->parameter->buf, (size_t)re->parameter->size, "error parameter");
        break;
    }
    default: /* reject: nothing more to decode */
        break;
    }
out:
    ASN_STRUCT_FREE(asn_DEF_ROS, r);
    return rc;
}

static int decode_apdu(const struct apdu *p, int *is_event) {
    if (p->len && p->buf[0] >= 0x60 && p->buf[0] <= 0x64) return decode_acse(p, is_event);
    return decode_ros(p, is_event);
}

/* ---- reading captures/*.frames.tsv ---- */

static struct apdu *apdus;
static size_t n_apdus, cap_apdus;

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void read_capture(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.frames.tsv", dir, name);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "harness: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    int siemens = strncmp(name, "hipath", 6) == 0;
    enum dialect d = strncmp(name, "oxe", 3) == 0 ? PHASE2 : PHASE3;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t got;
    int lineno = 0;
    while ((got = getline(&line, &linecap, f)) >= 0) {
        lineno++;
        if (got == 0 || line[0] == '#' || line[0] == '\n' || line[0] == '\r') continue;
        /* columns: pdu_no, segment_no, time, dir, framed_hex, label */
        char *col = line;
        for (int i = 0; i < 4 && col; i++) {
            col = strchr(col, '\t');
            if (col) col++;
        }
        if (!col) {
            fprintf(stderr, "harness: %s:%d: fewer than 5 columns\n", path, lineno);
            exit(2);
        }
        size_t hexlen = strcspn(col, "\t\r\n");
        if (hexlen % 2) {
            fprintf(stderr, "harness: %s:%d: odd hex length\n", path, lineno);
            exit(2);
        }
        size_t n = hexlen / 2;
        uint8_t *frame = malloc(n ? n : 1);
        for (size_t i = 0; i < n; i++) {
            int hi = hexval(col[2 * i]), lo = hexval(col[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                fprintf(stderr, "harness: %s:%d: bad hex\n", path, lineno);
                exit(2);
            }
            frame[i] = (uint8_t)(hi << 4 | lo);
        }
        /* framing: Siemens 26 80|hi lo (15-bit length), else a 2-byte big-endian length */
        size_t hdr = siemens ? 3 : 2, want;
        if (n < hdr || (siemens && (frame[0] != 0x26 || !(frame[1] & 0x80)))) {
            fprintf(stderr, "harness: %s:%d: bad frame header\n", path, lineno);
            exit(2);
        }
        want = siemens ? ((size_t)(frame[1] & 0x7F) << 8 | frame[2]) : ((size_t)frame[0] << 8 | frame[1]);
        if (want != n - hdr) {
            fprintf(stderr, "harness: %s:%d: frame length %zu, header says %zu\n", path, lineno, n - hdr, want);
            exit(2);
        }
        if (n_apdus == cap_apdus) {
            cap_apdus = cap_apdus ? 2 * cap_apdus : 256;
            apdus = realloc(apdus, cap_apdus * sizeof *apdus);
        }
        struct apdu *p = &apdus[n_apdus++];
        p->len = n - hdr;
        p->buf = malloc(p->len ? p->len : 1);
        memcpy(p->buf, frame + hdr, p->len);
        p->dialect = d;
        p->is_event = 0;
        snprintf(p->origin, sizeof p->origin, "%s.frames.tsv:%d", name, lineno);
        free(frame);
    }
    free(line);
    fclose(f);
}

/* ---- timing ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* APDUs per second over whole passes of `set` lasting at least `seconds`. */
static double run_once(struct apdu **set, size_t n, double seconds) {
    unsigned long passes = 0;
    int ev;
    double t0 = now(), t;
    do {
        for (size_t i = 0; i < n; i++) {
            if (decode_apdu(set[i], &ev)) {
                fprintf(stderr, "harness: %s failed during timing: %s\n", set[i]->origin, err);
                exit(1);
            }
        }
        passes++;
    } while ((t = now()) - t0 < seconds);
    return (double)passes * (double)n / (t - t0);
}

static void bench(const char *label, struct apdu **set, size_t n, int runs, double seconds) {
    double *r = malloc((size_t)runs * sizeof *r);
    run_once(set, n, seconds / 2); /* warm-up */
    for (int i = 0; i < runs; i++) r[i] = run_once(set, n, seconds);
    double *s = malloc((size_t)runs * sizeof *s);
    memcpy(s, r, (size_t)runs * sizeof *s);
    qsort(s, (size_t)runs, sizeof *s, cmp_double);
    double med = runs % 2 ? s[runs / 2] : (s[runs / 2 - 1] + s[runs / 2]) / 2;
    printf("%-12s (%3zu APDUs): decode %.3f M APDUs/s  (median of %d runs of >= %.1f s; min %.3f M, max %.3f M; %.0f ns/APDU)\n",
           label, n, med / 1e6, runs, seconds, s[0] / 1e6, s[runs - 1] / 1e6, 1e9 / med);
    free(r);
    free(s);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s CAPTURES_DIR [RUNS [SECONDS_PER_RUN]]\n", argv[0]);
        return 2;
    }
    int runs = argc > 2 ? atoi(argv[2]) : 7;
    double seconds = argc > 3 ? atof(argv[3]) : 1.0;
    if (runs < 1) runs = 1;
    if (seconds <= 0) seconds = 1.0;
    /* same captures and order as benches/codec.rs */
    static const char *names[] = {"panasonic-csta3-makecall-20160727", "panasonic-csta3-rejects-20161101",
                                  "hipath-csta3-session-20130104", "oxe-csta2-events-smallf00t"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) read_capture(argv[1], names[i]);

    /* check pass: every APDU must decode fully, second step included */
    size_t failed = 0, n_events = 0;
    for (size_t i = 0; i < n_apdus; i++) {
        if (decode_apdu(&apdus[i], &apdus[i].is_event)) {
            fprintf(stderr, "FAIL %s (%s): %s\n", apdus[i].origin, apdus[i].dialect == PHASE3 ? "phase3" : "phase2", err);
            failed++;
        }
        n_events += apdus[i].is_event != 0;
    }
    printf("check: %zu APDUs, %zu decode fully (RC_OK, every byte consumed, open types included), %zu fail; %zu event reports\n",
           n_apdus, n_apdus - failed, failed, n_events);
    if (failed) return 1;

    struct apdu **mix = malloc(n_apdus * sizeof *mix), **events = malloc((n_events ? n_events : 1) * sizeof *events);
    size_t ne = 0;
    for (size_t i = 0; i < n_apdus; i++) {
        mix[i] = &apdus[i];
        if (apdus[i].is_event) events[ne++] = &apdus[i];
    }
    bench("capture-mix", mix, n_apdus, runs, seconds);
    bench("events", events, ne, runs, seconds);
    return 0;
}
