/*
 * The collector's protobuf decoding in C: the wire format of an OTLP ExportTraceServiceRequest ->
 * plain Python values per span (otel_workflow.otlp.decode builds the SDK objects from them).
 *
 * `otel_workflow.otlp.decode` keeps the upb path (ExportTraceServiceRequest.FromString, then the
 * generated message classes) as the reference; tests/test_otlp_wire_decode.py compares the two on
 * generated and hostile input. This module exists because the upb objects cost about 50 us per
 * span to walk from Python (one Python object per KeyValue and AnyValue, WhichOneof per value),
 * while the bytes hold everything needed to build the span's values directly.
 *
 * The input is untrusted, so the parser follows upb's rules exactly where they decide between
 * accepting and refusing a body: varints of at most 10 bytes, tags of at most 5 (field numbers
 * 1..2^29-1), lengths of at most 5 bytes that stay within their message, at most 100 levels of
 * nested messages and groups below the request, UTF-8 checked in every occurrence of a `string`
 * field (as Python's strict decoder does, which agrees with upb's), unknown fields of every wire
 * type skipped (groups parsed to their matching end), and a known field with another wire type
 * taken as unknown. Merges follow protobuf: a scalar seen twice keeps the last value, a singular
 * message seen twice is merged (Status, KeyValue.value and AnyValue's array/kvlist members
 * field by field here; Resource and InstrumentationScope by concatenating their bytes, which
 * Python parses with upb, at the depth they have in a request). Every read is bounds-checked; the
 * GIL is held throughout (the values built are Python objects).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* upb's default: messages (and groups) nested below the request. */
#define MAX_DEPTH 100

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

static PyObject *WireError;
static PyObject *empty_str, *empty_tuple;

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

static int fail(const char *message) {
    PyErr_SetString(WireError, message);
    return -1;
}

/* ---- wire primitives ---- */

static int read_varint(Reader *r, uint64_t *out) {
    uint64_t value = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) {
            return fail("truncated varint");
        }
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << (7 * i); /* bits past 64 are dropped, as upb does */
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return fail("varint longer than 10 bytes");
}

/* A tag is a varint of at most 5 bytes that fits 32 bits; field number 0 is invalid. */
static int read_tag(Reader *r, uint32_t *field, int *wire_type) {
    uint32_t value = 0;
    for (int i = 0;; i++) {
        if (r->p >= r->end) {
            return fail("truncated field tag");
        }
        uint8_t byte = *r->p++;
        if (i == 4 && byte > 0x0f) {
            return fail("field tag longer than 32 bits");
        }
        value |= (uint32_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            break;
        }
    }
    *field = value >> 3;
    *wire_type = (int)(value & 7);
    if (*field == 0) {
        return fail("field number 0");
    }
    return 0;
}

/* A length-delimited payload: a varint length of at most 5 bytes, within the enclosing message. */
static int read_len(Reader *r, Reader *payload) {
    uint64_t size = 0;
    for (int i = 0;; i++) {
        if (i == 5) {
            return fail("length longer than 5 bytes");
        }
        if (r->p >= r->end) {
            return fail("truncated length");
        }
        uint8_t byte = *r->p++;
        size |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            break;
        }
    }
    if (size > (uint64_t)(r->end - r->p)) {
        return fail("length past the end of its message");
    }
    payload->p = r->p;
    payload->end = r->p + size;
    r->p += size;
    return 0;
}

static int read_fixed(Reader *r, int size, uint64_t *out) {
    if (r->end - r->p < size) {
        return fail("truncated fixed-width field");
    }
    uint64_t value = 0;
    for (int i = size - 1; i >= 0; i--) {
        value = (value << 8) | r->p[i];
    }
    r->p += size;
    *out = value;
    return 0;
}

/* A nested message: its payload, and one level less for what it nests. */
static int enter(Reader *r, Reader *payload, int depth) {
    if (read_len(r, payload) < 0) {
        return -1;
    }
    if (depth <= 0) {
        return fail("messages nested more than 100 deep");
    }
    return 0;
}

static int skip_field(Reader *r, uint32_t field, int wire_type, int depth);

/* An unknown group: its fields up to the end-group tag of the same number. */
static int skip_group(Reader *r, uint32_t field, int depth) {
    if (depth <= 0) {
        return fail("groups nested more than 100 deep");
    }
    while (r->p < r->end) {
        uint32_t inner;
        int wire_type;
        if (read_tag(r, &inner, &wire_type) < 0) {
            return -1;
        }
        if (wire_type == WT_EGROUP) {
            return inner == field ? 0 : fail("end-group tag of another group");
        }
        if (skip_field(r, inner, wire_type, depth - 1) < 0) {
            return -1;
        }
    }
    return fail("unterminated group");
}

static int skip_field(Reader *r, uint32_t field, int wire_type, int depth) {
    uint64_t ignored;
    Reader payload;
    switch (wire_type) {
    case WT_VARINT:
        return read_varint(r, &ignored);
    case WT_I64:
        return read_fixed(r, 8, &ignored);
    case WT_I32:
        return read_fixed(r, 4, &ignored);
    case WT_LEN:
        return read_len(r, &payload);
    case WT_SGROUP:
        return skip_group(r, field, depth);
    case WT_EGROUP:
        return fail("end-group tag outside a group");
    default:
        return fail("invalid wire type");
    }
}

/* A `string` field's value (a new reference), refused unless it is valid UTF-8. */
static PyObject *read_string(Reader *r) {
    Reader payload;
    if (read_len(r, &payload) < 0) {
        return NULL;
    }
    PyObject *text =
        PyUnicode_DecodeUTF8((const char *)payload.p, payload.end - payload.p, NULL);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        fail("invalid UTF-8 in a string field");
    }
    return text;
}

/* Replace *slot (owned) by a new string field value. */
static int replace_string(Reader *r, PyObject **slot) {
    PyObject *text = read_string(r);
    if (text == NULL) {
        return -1;
    }
    Py_XSETREF(*slot, text);
    return 0;
}

/* Append a singular message's bytes to *slot (owned): parsing the concatenation is protobuf's merge. */
static int append_bytes(const Reader *payload, PyObject **slot) {
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)payload->p, payload->end - payload->p);
    if (chunk == NULL) {
        return -1;
    }
    if (*slot == NULL) {
        *slot = chunk;
        return 0;
    }
    PyBytes_ConcatAndDel(slot, chunk);
    return *slot == NULL ? -1 : 0;
}

static int all_zero(const uint8_t *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i]) {
            return 0;
        }
    }
    return 1;
}

static PyObject *unsigned_id(const uint8_t *p, Py_ssize_t n) {
    return _PyLong_FromByteArray(p, (size_t)n, 0, 0);
}

/* OTLP/JSON's form of a bytes_value: standard base64 with padding, as base64.b64encode gives. */
static PyObject *base64_text(const uint8_t *p, Py_ssize_t n) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    PyObject *text = PyUnicode_New((n + 2) / 3 * 4, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *out++ = (Py_UCS1)alphabet[v >> 18];
        *out++ = (Py_UCS1)alphabet[(v >> 12) & 63];
        *out++ = (Py_UCS1)alphabet[(v >> 6) & 63];
        *out++ = (Py_UCS1)alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *out++ = (Py_UCS1)alphabet[v >> 18];
        *out++ = (Py_UCS1)alphabet[(v >> 12) & 63];
        *out++ = (Py_UCS1)(i + 1 < n ? alphabet[(v >> 6) & 63] : '=');
        *out++ = '=';
    }
    return text;
}

/* ---- AnyValue, KeyValue ---- */

/* AnyValue's oneof `value`: which member was seen last, and its value so far (owned). */
enum { AV_UNSET, AV_SCALAR, AV_ARRAY, AV_KVLIST };

typedef struct {
    int kind;
    PyObject *value;
} AnyState;

static int parse_keyvalue(Reader *r, int depth, PyObject *into);

static int set_scalar(AnyState *state, PyObject *value) {
    if (value == NULL) {
        return -1;
    }
    state->kind = AV_SCALAR;
    Py_XSETREF(state->value, value);
    return 0;
}

/* The array or map a member adds to: the one so far if the oneof holds that member, else new. */
static PyObject *container(AnyState *state, int kind) {
    if (state->kind != kind) {
        PyObject *made = kind == AV_ARRAY ? PyList_New(0) : PyDict_New();
        if (made == NULL) {
            return NULL;
        }
        state->kind = kind;
        Py_XSETREF(state->value, made);
    }
    return state->value;
}

static int parse_anyvalue(Reader *r, int depth, AnyState *state);

/* The Python value of a parsed AnyValue (a new reference; `state` is released): an array as a
 * tuple, an unset oneof as None. */
static PyObject *finish_any(AnyState *state) {
    if (state->kind == AV_ARRAY) {
        PyObject *items = PyList_AsTuple(state->value);
        Py_DECREF(state->value);
        return items;
    }
    return state->value != NULL ? state->value : Py_NewRef(Py_None);
}

static int parse_array_into(Reader *r, int depth, PyObject *list) {
    while (r->p < r->end) {
        uint32_t field;
        int wire_type;
        if (read_tag(r, &field, &wire_type) < 0) {
            return -1;
        }
        if (field == 1 && wire_type == WT_LEN) {
            Reader payload;
            AnyState item = {AV_UNSET, NULL};
            if (enter(r, &payload, depth) < 0 || parse_anyvalue(&payload, depth - 1, &item) < 0) {
                Py_XDECREF(item.value);
                return -1;
            }
            PyObject *value = finish_any(&item);
            if (value == NULL) {
                return -1;
            }
            int appended = PyList_Append(list, value);
            Py_DECREF(value);
            if (appended < 0) {
                return -1;
            }
        } else if (skip_field(r, field, wire_type, depth) < 0) {
            return -1;
        }
    }
    return 0;
}

static int parse_kvlist_into(Reader *r, int depth, PyObject *dict) {
    while (r->p < r->end) {
        uint32_t field;
        int wire_type;
        if (read_tag(r, &field, &wire_type) < 0) {
            return -1;
        }
        if (field == 1 && wire_type == WT_LEN) {
            Reader payload;
            if (enter(r, &payload, depth) < 0 || parse_keyvalue(&payload, depth - 1, dict) < 0) {
                return -1;
            }
        } else if (skip_field(r, field, wire_type, depth) < 0) {
            return -1;
        }
    }
    return 0;
}

/* One (more) AnyValue payload merged into `state`: a scalar member replaces what the oneof held; an
 * array or kvlist member extends the one the oneof holds already, as protobuf's merge does. */
static int parse_anyvalue(Reader *r, int depth, AnyState *state) {
    while (r->p < r->end) {
        uint32_t field;
        int wire_type;
        if (read_tag(r, &field, &wire_type) < 0) {
            return -1;
        }
        uint64_t number;
        Reader payload;
        int status;
        if (field == 1 && wire_type == WT_LEN) {
            status = set_scalar(state, read_string(r));
        } else if (field == 2 && wire_type == WT_VARINT) {
            status = read_varint(r, &number) < 0 ? -1 : set_scalar(state, PyBool_FromLong(number != 0));
        } else if (field == 3 && wire_type == WT_VARINT) {
            status = read_varint(r, &number) < 0 ? -1
                                                   : set_scalar(state, PyLong_FromLongLong((int64_t)number));
        } else if (field == 4 && wire_type == WT_I64) {
            double real;
            if (read_fixed(r, 8, &number) < 0) {
                return -1;
            }
            memcpy(&real, &number, sizeof real);
            status = set_scalar(state, PyFloat_FromDouble(real));
        } else if ((field == 5 || field == 6) && wire_type == WT_LEN) {
            if (enter(r, &payload, depth) < 0) {
                return -1;
            }
            PyObject *into = container(state, field == 5 ? AV_ARRAY : AV_KVLIST);
            status = into == NULL                ? -1
                     : field == 5 ? parse_array_into(&payload, depth - 1, into)
                                  : parse_kvlist_into(&payload, depth - 1, into);
        } else if (field == 7 && wire_type == WT_LEN) {
            status = read_len(r, &payload) < 0
                         ? -1
                         : set_scalar(state, base64_text(payload.p, payload.end - payload.p));
        } else if (field == 8 && wire_type == WT_VARINT) {
            /* string_value_strindex (profiles' string table): no value here, as in decode_any_value. */
            status = read_varint(r, &number) < 0 ? -1 : set_scalar(state, Py_NewRef(Py_None));
        } else {
            status = skip_field(r, field, wire_type, depth);
        }
        if (status < 0) {
            return -1;
        }
    }
    return 0;
}

/* One KeyValue into `into` (a repeated key keeps its last value, as attribute_values does). */
static int parse_keyvalue(Reader *r, int depth, PyObject *into) {
    PyObject *key = NULL;
    AnyState value = {AV_UNSET, NULL};
    int status = 0;
    while (status == 0 && r->p < r->end) {
        uint32_t field;
        int wire_type;
        Reader payload;
        if (read_tag(r, &field, &wire_type) < 0) {
            status = -1;
        } else if (field == 1 && wire_type == WT_LEN) {
            status = replace_string(r, &key);
        } else if (field == 2 && wire_type == WT_LEN) {
            status = enter(r, &payload, depth) < 0 ? -1 : parse_anyvalue(&payload, depth - 1, &value);
        } else {
            status = skip_field(r, field, wire_type, depth);
        }
    }
    if (status < 0) {
        Py_XDECREF(key);
        Py_XDECREF(value.value);
        return -1;
    }
    PyObject *item = finish_any(&value);
    status = item == NULL ? -1 : PyDict_SetItem(into, key != NULL ? key : empty_str, item);
    Py_XDECREF(key);
    Py_XDECREF(item);
    return status;
}

/* The attributes of a span, event or link: one KeyValue payload at a time into the dict *slot. */
static int attribute(Reader *r, int depth, PyObject **slot) {
    Reader payload;
    if (enter(r, &payload, depth) < 0) {
        return -1;
    }
    if (*slot == NULL && (*slot = PyDict_New()) == NULL) {
        return -1;
    }
    return parse_keyvalue(&payload, depth - 1, *slot);
}

static PyObject *dict_or_empty(PyObject *dict) {
    return dict != NULL ? dict : PyDict_New();
}

static PyObject *string_or_empty(PyObject *text) {
    return text != NULL ? text : Py_NewRef(empty_str);
}

/* ---- the SDK's classes (given by `configure`) ---- */

static PyObject *span_type, *context_type, *event_type, *link_type, *status_type;
static PyObject *trace_flags;      /* TraceFlags(0..255) */
static PyObject *kinds;            /* SpanKind by OTLP value 0..5 (0 and unknown values: INTERNAL) */
static PyObject *status_codes;     /* StatusCode by OTLP value 0..2 (unknown values: UNSET) */
static PyObject *parse_trace_state; /* decode._trace_state: header -> TraceState, never raises */
static PyObject *empty_trace_state, *default_trace_state;

enum { SPAN_ATTRS = 14, EVENT_ATTRS = 3, LINK_ATTRS = 2, STATUS_ATTRS = 2 };
/* In the order the SDK's __init__ methods set them, so the instances look like theirs. */
static PyObject *span_names[SPAN_ATTRS], *event_names[EVENT_ATTRS], *link_names[LINK_ATTRS],
    *status_names[STATUS_ATTRS];
static const char *const span_keys[SPAN_ATTRS] = {
    "_name",       "_context",    "_kind",       "_instrumentation_info", "_instrumentation_scope",
    "_parent",     "_start_time", "_end_time",   "_attributes",           "_events",
    "_links",      "_resource",   "_status",     "_received_dropped"};
static const char *const event_keys[EVENT_ATTRS] = {"_name", "_timestamp", "_attributes"};
static const char *const link_keys[LINK_ATTRS] = {"_context", "_attributes"};
static const char *const status_keys[STATUS_ATTRS] = {"_status_code", "_description"};

/* An instance of `type` (object.__new__, no __init__) with `values` (owned; all released) set. */
static PyObject *instance(PyObject *type, int n, PyObject *const *names, PyObject **values) {
    PyObject *made = NULL;
    for (int i = 0; i < n; i++) {
        if (values[i] == NULL) {
            goto done;
        }
    }
    made = PyBaseObject_Type.tp_new((PyTypeObject *)type, empty_tuple, NULL);
    for (int i = 0; made != NULL && i < n; i++) {
        if (PyObject_SetAttr(made, names[i], values[i]) < 0) {
            Py_CLEAR(made);
        }
    }
done:
    for (int i = 0; i < n; i++) {
        Py_XDECREF(values[i]);
    }
    return made;
}

/* SpanContext(trace_id, span_id, is_remote, flags, state) as its __new__ makes it: a tuple with
 * is_valid last, allocated as tuple.__new__ allocates a subclass. `trace_id`, `span_id` and `state`
 * are owned (released). */
static PyObject *span_context(PyObject *trace_id, PyObject *span_id, int is_remote, uint64_t flags,
                              PyObject *state, int valid) {
    PyTypeObject *type = (PyTypeObject *)context_type;
    PyObject *made = trace_id != NULL && span_id != NULL && state != NULL ? type->tp_alloc(type, 6) : NULL;
    if (made == NULL) {
        Py_XDECREF(trace_id);
        Py_XDECREF(span_id);
        Py_XDECREF(state);
        return NULL;
    }
    PyObject *items[6] = {trace_id, span_id, Py_NewRef(is_remote ? Py_True : Py_False),
                          Py_NewRef(PyTuple_GET_ITEM(trace_flags, flags & 0xFF)), state,
                          Py_NewRef(valid ? Py_True : Py_False)};
    for (int i = 0; i < 6; i++) {
        PyTuple_SET_ITEM(made, i, items[i]);
    }
    return made;
}

/* Span.flags / Link.flags: bit 8 says whether bit 9 (the context is remote) is known. */
static int is_remote(uint64_t flags) {
    return (flags & 0x100) && (flags & 0x200);
}

/* The TraceState of a header (a new reference); `header` (owned, may be NULL: unset) is released. */
static PyObject *trace_state_of(PyObject *header) {
    PyObject *state;
    if (header == NULL || PyUnicode_GET_LENGTH(header) == 0) {
        state = Py_NewRef(empty_trace_state);
    } else {
        state = PyObject_CallOneArg(parse_trace_state, header);
    }
    Py_XDECREF(header);
    return state;
}

/* The exception being raised (a new reference), cleared: it becomes a value (a span's rejection). */
static PyObject *raised_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* ---- Span.Event, Span.Link ---- */

static PyObject *parse_event(Reader *r, int depth) {
    PyObject *name = NULL, *attributes = NULL;
    uint64_t time = 0;
    int status = 0;
    while (status == 0 && r->p < r->end) {
        uint32_t field;
        int wire_type;
        if (read_tag(r, &field, &wire_type) < 0) {
            status = -1;
        } else if (field == 1 && wire_type == WT_I64) {
            status = read_fixed(r, 8, &time);
        } else if (field == 2 && wire_type == WT_LEN) {
            status = replace_string(r, &name);
        } else if (field == 3 && wire_type == WT_LEN) {
            status = attribute(r, depth, &attributes);
        } else {
            status = skip_field(r, field, wire_type, depth);
        }
    }
    if (status < 0) {
        Py_XDECREF(name);
        Py_XDECREF(attributes);
        return NULL;
    }
    PyObject *values[EVENT_ATTRS] = {string_or_empty(name), PyLong_FromUnsignedLongLong(time),
                                     dict_or_empty(attributes)};
    return instance(event_type, EVENT_ATTRS, event_names, values);
}

typedef struct {
    PyObject *trace_state, *attributes;
    Reader trace_id, span_id;
    uint64_t flags;
} LinkState;

static int link_field(Reader *r, uint32_t field, int wire_type, int depth, LinkState *link) {
    if (field == 1 && wire_type == WT_LEN) {
        return read_len(r, &link->trace_id);
    }
    if (field == 2 && wire_type == WT_LEN) {
        return read_len(r, &link->span_id);
    }
    if (field == 3 && wire_type == WT_LEN) {
        return replace_string(r, &link->trace_state);
    }
    if (field == 4 && wire_type == WT_LEN) {
        return attribute(r, depth, &link->attributes);
    }
    if (field == 6 && wire_type == WT_I32) {
        return read_fixed(r, 4, &link->flags);
    }
    return skip_field(r, field, wire_type, depth);
}

/* A Link; None if its ids have the wrong sizes (the span counts it as dropped). A failure to build
 * it (not to parse it) is left in *failure, as the span's reason to be rejected. */
static PyObject *parse_link(Reader *r, int depth, PyObject **failure) {
    LinkState link;
    memset(&link, 0, sizeof link);
    int status = 0;
    while (status == 0 && r->p < r->end) {
        uint32_t field;
        int wire_type;
        status = read_tag(r, &field, &wire_type) < 0 ? -1 : link_field(r, field, wire_type, depth, &link);
    }
    Py_ssize_t trace_size = link.trace_id.end - link.trace_id.p, span_size = link.span_id.end - link.span_id.p;
    if (status < 0 || trace_size != 16 || span_size != 8) {
        Py_XDECREF(link.trace_state);
        Py_XDECREF(link.attributes);
        return status < 0 ? NULL : Py_NewRef(Py_None);
    }
    int valid = !all_zero(link.trace_id.p, 16) && !all_zero(link.span_id.p, 8);
    PyObject *values[LINK_ATTRS] = {
        span_context(unsigned_id(link.trace_id.p, 16), unsigned_id(link.span_id.p, 8), is_remote(link.flags),
                     link.flags, trace_state_of(link.trace_state), valid),
        dict_or_empty(link.attributes)};
    PyObject *made = instance(link_type, LINK_ATTRS, link_names, values);
    if (made == NULL && *failure == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        *failure = raised_exception();
        return Py_NewRef(Py_None);
    }
    return made;
}

/* ---- Span ---- */

typedef struct {
    PyObject *name, *trace_state, *status_message, *attributes, *events, *links, *failure;
    Reader trace_id, span_id, parent_span_id;
    uint64_t flags, start, end;
    int32_t kind, status_code;
    uint32_t dropped_attributes, dropped_events, dropped_links;
    Py_ssize_t invalid_links;
} SpanState;

static void span_clear(SpanState *span) {
    Py_XDECREF(span->name);
    Py_XDECREF(span->trace_state);
    Py_XDECREF(span->status_message);
    Py_XDECREF(span->attributes);
    Py_XDECREF(span->events);
    Py_XDECREF(span->links);
    Py_XDECREF(span->failure);
}

/* Append a parsed event or link (a new reference, or NULL on error) to the list *slot. */
static int append_item(PyObject **slot, PyObject *item) {
    if (item == NULL) {
        return -1;
    }
    if (*slot == NULL && (*slot = PyList_New(0)) == NULL) {
        Py_DECREF(item);
        return -1;
    }
    int status = PyList_Append(*slot, item);
    Py_DECREF(item);
    return status;
}

static int span_event(Reader *r, int depth, SpanState *span) {
    Reader payload;
    if (enter(r, &payload, depth) < 0) {
        return -1;
    }
    return append_item(&span->events, parse_event(&payload, depth - 1));
}

static int span_link(Reader *r, int depth, SpanState *span) {
    Reader payload;
    if (enter(r, &payload, depth) < 0) {
        return -1;
    }
    PyObject *link = parse_link(&payload, depth - 1, &span->failure);
    if (link == Py_None) {
        Py_DECREF(link);
        span->invalid_links++;
        return 0;
    }
    return append_item(&span->links, link);
}

/* Status, merged field by field into the span (a repeated status merges, as protobuf does). */
static int span_status(Reader *r, int depth, SpanState *span) {
    Reader payload;
    if (enter(r, &payload, depth) < 0) {
        return -1;
    }
    while (payload.p < payload.end) {
        uint32_t field;
        int wire_type;
        uint64_t code = 0;
        if (read_tag(&payload, &field, &wire_type) < 0) {
            return -1;
        }
        int status;
        if (field == 2 && wire_type == WT_LEN) {
            status = replace_string(&payload, &span->status_message);
        } else if (field == 3 && wire_type == WT_VARINT) {
            status = read_varint(&payload, &code);
            span->status_code = (int32_t)(uint32_t)code;
        } else {
            status = skip_field(&payload, field, wire_type, depth - 1);
        }
        if (status < 0) {
            return -1;
        }
    }
    return 0;
}

static int span_varint(Reader *r, int field, SpanState *span) {
    uint64_t value;
    if (read_varint(r, &value) < 0) {
        return -1;
    }
    switch (field) {
    case 6:
        span->kind = (int32_t)(uint32_t)value; /* int32 enum: the low 32 bits, signed */
        break;
    case 10:
        span->dropped_attributes = (uint32_t)value;
        break;
    case 12:
        span->dropped_events = (uint32_t)value;
        break;
    default:
        span->dropped_links = (uint32_t)value;
        break;
    }
    return 0;
}

static int span_field(Reader *r, uint32_t field, int wire_type, int depth, SpanState *span) {
    switch (wire_type == WT_LEN ? field : 0) {
    case 1:
        return read_len(r, &span->trace_id);
    case 2:
        return read_len(r, &span->span_id);
    case 3:
        return replace_string(r, &span->trace_state);
    case 4:
        return read_len(r, &span->parent_span_id);
    case 5:
        return replace_string(r, &span->name);
    case 9:
        return attribute(r, depth, &span->attributes);
    case 11:
        return span_event(r, depth, span);
    case 13:
        return span_link(r, depth, span);
    case 15:
        return span_status(r, depth, span);
    default:
        break;
    }
    if (wire_type == WT_VARINT && (field == 6 || field == 10 || field == 12 || field == 14)) {
        return span_varint(r, (int)field, span);
    }
    if (wire_type == WT_I64 && (field == 7 || field == 8)) {
        return read_fixed(r, 8, field == 7 ? &span->start : &span->end);
    }
    if (wire_type == WT_I32 && field == 16) {
        return read_fixed(r, 4, &span->flags);
    }
    return skip_field(r, field, wire_type, depth);
}

/* Why an id makes its span invalid, for Python to word: (id bytes, expected size, field name). */
static PyObject *id_problem(const Reader *id, Py_ssize_t size, const char *what) {
    Py_ssize_t n = id->end - id->p;
    if (n == size && !all_zero(id->p, n)) {
        return NULL;
    }
    return Py_BuildValue("(y#ns)", n > 0 ? (const char *)id->p : "", n, size, what);
}

/* Status without a description, one per code, shared as the SDK shares its default Status(UNSET)
 * (nothing changes a Status): a span fewer objects for the garbage collector to scan. */
static PyObject *plain_status[3];

static PyObject *new_status(int code, PyObject *description) {
    PyObject *values[STATUS_ATTRS] = {Py_NewRef(PyTuple_GET_ITEM(status_codes, code)), description};
    return instance(status_type, STATUS_ATTRS, status_names, values);
}

static PyObject *span_status_value(SpanState *span) {
    int code = span->status_code == 1 || span->status_code == 2 ? span->status_code : 0;
    /* The SDK keeps a description only on ERROR (and warns otherwise): do as it does, without the warning. */
    if (code == 2 && span->status_message != NULL && PyUnicode_GET_LENGTH(span->status_message) > 0) {
        return new_status(code, Py_NewRef(span->status_message));
    }
    if (plain_status[code] == NULL && (plain_status[code] = new_status(code, Py_NewRef(Py_None))) == NULL) {
        return NULL;
    }
    return Py_NewRef(plain_status[code]);
}

/* The sender's dropped counts; the usual (0, 0, 0) is one shared tuple. */
static PyObject *dropped_value(SpanState *span) {
    static PyObject *none_dropped;
    long long links = (long long)span->dropped_links + (long long)span->invalid_links;
    if (span->dropped_attributes != 0 || span->dropped_events != 0 || links != 0) {
        return Py_BuildValue("(kkL)", (unsigned long)span->dropped_attributes,
                             (unsigned long)span->dropped_events, links);
    }
    if (none_dropped == NULL && (none_dropped = Py_BuildValue("(iii)", 0, 0, 0)) == NULL) {
        return NULL;
    }
    return Py_NewRef(none_dropped);
}

/* The span's ReceivedSpan (its _resource and _instrumentation_scope None, for the caller to set), or
 * what rejects it: an id_problem tuple, or the exception that building it raised. */
static PyObject *span_value(SpanState *span) {
    PyObject *problem = id_problem(&span->trace_id, 16, "trace_id");
    if (problem == NULL) {
        problem = id_problem(&span->span_id, 8, "span_id");
    }
    if (problem != NULL) {
        return problem;
    }
    PyObject *trace_id = unsigned_id(span->trace_id.p, 16);
    PyObject *context = span_context(Py_XNewRef(trace_id), unsigned_id(span->span_id.p, 8), 0,
                                     span->flags, trace_state_of(Py_XNewRef(span->trace_state)), 1);
    const Reader *parent_id = &span->parent_span_id;
    Py_ssize_t parent_size = parent_id->end - parent_id->p;
    PyObject *parent = NULL;
    if (parent_size == 0 || all_zero(parent_id->p, parent_size)) {
        parent = Py_NewRef(Py_None); /* an all-zero parent id is how some SDKs write "no parent" */
    } else if ((problem = id_problem(parent_id, 8, "parent_span_id")) == NULL) {
        parent = span_context(Py_XNewRef(trace_id), unsigned_id(parent_id->p, 8), is_remote(span->flags),
                              span->flags, Py_NewRef(default_trace_state), 1);
    }
    Py_XDECREF(trace_id);
    if (context == NULL || problem != NULL || span->failure != NULL) {
        Py_XDECREF(context);
        Py_XDECREF(parent);
        if (context == NULL) {
            Py_XDECREF(problem);
            return NULL;
        }
        return problem != NULL ? problem : Py_NewRef(span->failure);
    }
    int kind = span->kind >= 0 && span->kind <= 5 ? span->kind : 0;
    PyObject *values[SPAN_ATTRS] = {
        string_or_empty(Py_XNewRef(span->name)),
        context,
        Py_NewRef(PyTuple_GET_ITEM(kinds, kind)),
        Py_NewRef(Py_None),
        Py_NewRef(Py_None),
        parent,
        PyLong_FromUnsignedLongLong(span->start),
        PyLong_FromUnsignedLongLong(span->end),
        dict_or_empty(Py_XNewRef(span->attributes)),
        span->events != NULL ? Py_NewRef(span->events) : PyList_New(0),
        span->links != NULL ? Py_NewRef(span->links) : PyList_New(0),
        Py_NewRef(Py_None),
        span_status_value(span),
        dropped_value(span),
    };
    return instance(span_type, SPAN_ATTRS, span_names, values);
}

static PyObject *parse_span(Reader *r, int depth) {
    SpanState span;
    memset(&span, 0, sizeof span);
    while (r->p < r->end) {
        uint32_t field;
        int wire_type;
        if (read_tag(r, &field, &wire_type) < 0 || span_field(r, field, wire_type, depth, &span) < 0) {
            span_clear(&span);
            return NULL;
        }
    }
    PyObject *value = span_value(&span);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        value = raised_exception(); /* a span we cannot rebuild costs only itself */
    }
    span_clear(&span);
    return value;
}

/* ---- ScopeSpans, ResourceSpans, the request ---- */

/* A group's (message bytes, schema_url, children): ScopeSpans -> (scope, schema_url, [span]),
 * ResourceSpans -> (resource, schema_url, [scope group]). */
typedef PyObject *(*ParseChild)(Reader *, int);

static PyObject *parse_group(Reader *r, int depth, ParseChild child) {
    PyObject *message = NULL, *schema_url = NULL, *children = PyList_New(0);
    int status = children == NULL ? -1 : 0;
    while (status == 0 && r->p < r->end) {
        uint32_t field;
        int wire_type;
        Reader payload;
        if (read_tag(r, &field, &wire_type) < 0) {
            status = -1;
        } else if (field == 1 && wire_type == WT_LEN) {
            status = enter(r, &payload, depth) < 0 ? -1 : append_bytes(&payload, &message);
        } else if (field == 2 && wire_type == WT_LEN) {
            status = enter(r, &payload, depth) < 0 ? -1 : append_item(&children, child(&payload, depth - 1));
        } else if (field == 3 && wire_type == WT_LEN) {
            status = replace_string(r, &schema_url);
        } else {
            status = skip_field(r, field, wire_type, depth);
        }
    }
    if (status < 0) {
        Py_XDECREF(message);
        Py_XDECREF(schema_url);
        Py_XDECREF(children);
        return NULL;
    }
    return Py_BuildValue("(NNN)", message != NULL ? message : PyBytes_FromStringAndSize(NULL, 0),
                         string_or_empty(schema_url), children);
}

static PyObject *parse_scope_spans(Reader *r, int depth) {
    return parse_group(r, depth, parse_span);
}

static PyObject *parse_resource_spans(Reader *r, int depth) {
    return parse_group(r, depth, parse_scope_spans);
}

static int configured(void) {
    if (span_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "otlpwire.configure() was not called");
        return 0;
    }
    return 1;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *given[11];
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!OOO:configure", &PyType_Type, &given[0], &PyType_Type,
                          &given[1], &PyType_Type, &given[2], &PyType_Type, &given[3], &PyType_Type,
                          &given[4], &PyTuple_Type, &given[5], &PyTuple_Type, &given[6], &PyTuple_Type,
                          &given[7], &given[8], &given[9], &given[10])) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(given[5]) != 256 || PyTuple_GET_SIZE(given[6]) != 6 ||
        PyTuple_GET_SIZE(given[7]) != 3 || !PyCallable_Check(given[8]) ||
        !PyType_IsSubtype((PyTypeObject *)given[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_ValueError,
                        "configure(span, context, event, link, status, 256 trace flags, 6 kinds, "
                        "3 status codes, trace_state, empty state, default state)");
        return NULL;
    }
    PyObject **slots[11] = {&span_type,    &context_type,      &event_type,        &link_type,
                            &status_type,  &trace_flags,       &kinds,             &status_codes,
                            &parse_trace_state, &empty_trace_state, &default_trace_state};
    for (int i = 0; i < 11; i++) {
        Py_XSETREF(*slots[i], Py_NewRef(given[i]));
    }
    for (int code = 0; code < 3; code++) {
        Py_CLEAR(plain_status[code]); /* made again of the classes given */
    }
    Py_RETURN_NONE;
}

static PyObject *parse(PyObject *module, PyObject *arg) {
    Py_buffer body;
    if (!configured() || PyObject_GetBuffer(arg, &body, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Reader r = {(const uint8_t *)body.buf, (const uint8_t *)body.buf + body.len};
    PyObject *groups = PyList_New(0);
    int status = groups == NULL ? -1 : 0;
    while (status == 0 && r.p < r.end) {
        uint32_t field;
        int wire_type;
        Reader payload;
        if (read_tag(&r, &field, &wire_type) < 0) {
            status = -1;
        } else if (field == 1 && wire_type == WT_LEN) {
            status = enter(&r, &payload, MAX_DEPTH) < 0
                         ? -1
                         : append_item(&groups, parse_resource_spans(&payload, MAX_DEPTH - 1));
        } else {
            status = skip_field(&r, field, wire_type, MAX_DEPTH);
        }
    }
    PyBuffer_Release(&body);
    if (status < 0) {
        Py_XDECREF(groups);
        return NULL;
    }
    return groups;
}

/* ---- module ---- */

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)configure, METH_VARARGS,
     "configure(span, context, event, link, status, trace_flags, kinds, status_codes, trace_state, "
     "empty_trace_state, default_trace_state): the SDK's classes and values the spans are built of."},
    {"parse", (PyCFunction)parse, METH_O,
     "parse(body) -> [(resource bytes, schema_url, [(scope bytes, schema_url, [span or rejection])])]; "
     "WireError if body is not an ExportTraceServiceRequest."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "otel_workflow._native.otlpwire",
    .m_doc = "OTLP ExportTraceServiceRequest protobuf bytes -> plain values per span (see "
             "otel_workflow.otlp.decode).",
    .m_size = -1,
    .m_methods = methods,
};

static int intern_all(PyObject **names, const char *const *keys, int n) {
    for (int i = 0; i < n; i++) {
        if (names[i] == NULL && (names[i] = PyUnicode_InternFromString(keys[i])) == NULL) {
            return -1;
        }
    }
    return 0;
}

PyMODINIT_FUNC PyInit_otlpwire(void) {
    if (empty_str == NULL && (empty_str = PyUnicode_InternFromString("")) == NULL) {
        return NULL;
    }
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL) {
        return NULL;
    }
    if (intern_all(span_names, span_keys, SPAN_ATTRS) < 0 || intern_all(event_names, event_keys, EVENT_ATTRS) < 0 ||
        intern_all(link_names, link_keys, LINK_ATTRS) < 0 ||
        intern_all(status_names, status_keys, STATUS_ATTRS) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (WireError == NULL) {
        WireError = PyErr_NewExceptionWithDoc(
            "otel_workflow._native.otlpwire.WireError",
            "The bytes are not a protobuf ExportTraceServiceRequest (the message says where they fail).",
            PyExc_ValueError, NULL);
        if (WireError == NULL) {
            Py_DECREF(module);
            return NULL;
        }
    }
    if (PyModule_AddObjectRef(module, "WireError", WireError) < 0 ||
        PyModule_AddIntConstant(module, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
