/*
 * The writer's hot loop in C: SDK spans -> Arrow record batches (spans, span_events, span_links).
 *
 * `otel_workflow.ingest.convert.SpanConverter` is the reference: this module produces the same rows, column
 * for column (tests/test_native_rows.py compares them on generated spans). It exists because the
 * writer's Python time is GIL time taken from the application it observes (about 15 us per span in
 * Python, README "Performance"). Anything out of the ordinary is handed back to Python, either for
 * one value (a helper from `configure`) or for the whole slice (an exception; the caller then uses
 * the Python converter), so odd input keeps the Python converter's behaviour.
 *
 * The batches leave through the Arrow C data interface as PyCapsules ("arrow_array"); `stream` hands
 * many of them to pyarrow at once, with the schemas of ingest/columns.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <sys/uio.h>
#include <unistd.h>
#endif

#include "conventions.h"

/* ---- Arrow C data interface (https://arrow.apache.org/docs/format/CDataInterface.html) ---- */

struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};

struct ArrowArrayStream {
    int (*get_schema)(struct ArrowArrayStream *, struct ArrowSchema *out);
    int (*get_next)(struct ArrowArrayStream *, struct ArrowArray *out);
    const char *(*get_last_error)(struct ArrowArrayStream *);
    void (*release)(struct ArrowArrayStream *);
    void *private_data;
};

/* ---- column builders ---- */

typedef enum { COL_STR, COL_I64, COL_I32, COL_F64, COL_BOOL } ColumnKind;

typedef struct {
    ColumnKind kind;
    int64_t length;
    int64_t null_count;
    uint8_t *validity; /* bitmap, 1 = valid */
    size_t validity_cap;
    uint8_t *data; /* fixed-width values, bit-packed booleans, or string bytes */
    size_t data_len;
    size_t data_cap;
    int32_t *offsets; /* strings: length + 1 entries */
    size_t offsets_cap;
} Column;

static int grow(void **buffer, size_t *capacity, size_t needed, size_t item) {
    if (needed <= *capacity) {
        return 0;
    }
    size_t wanted = *capacity ? *capacity : 64;
    while (wanted < needed) {
        wanted *= 2;
    }
    void *larger = realloc(*buffer, wanted * item);
    if (larger == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *buffer = larger;
    *capacity = wanted;
    return 0;
}

/* A bitmap (validity, or boolean values) with room for bit `index`; new bytes are zero. */
static int grow_bitmap(uint8_t **bitmap, size_t *capacity, size_t index) {
    size_t before = *capacity;
    if (grow((void **)bitmap, capacity, index / 8 + 1, 1) < 0) {
        return -1;
    }
    memset(*bitmap + before, 0, *capacity - before);
    return 0;
}

/* Room for one more row; marks it valid or null. */
static int column_next(Column *c, int valid) {
    if (grow_bitmap(&c->validity, &c->validity_cap, (size_t)c->length) < 0) {
        return -1;
    }
    if (valid) {
        c->validity[c->length / 8] |= (uint8_t)(1u << (c->length % 8));
    } else {
        c->null_count++;
    }
    if (c->kind == COL_STR) {
        if (grow((void **)&c->offsets, &c->offsets_cap, (size_t)c->length + 2, sizeof(int32_t)) < 0) {
            return -1;
        }
        if (c->length == 0) {
            c->offsets[0] = 0;
        }
    }
    return 0;
}

static int column_fixed(Column *c, const void *value, size_t width, int valid) {
    if (column_next(c, valid) < 0) {
        return -1;
    }
    size_t at = (size_t)c->length * width;
    if (grow((void **)&c->data, &c->data_cap, at + width, 1) < 0) {
        return -1;
    }
    if (valid) {
        memcpy(c->data + at, value, width);
    } else {
        memset(c->data + at, 0, width);
    }
    c->length++;
    return 0;
}

/* Booleans are bit-packed values beside the validity bits. */
static int column_boolean(Column *c, int valid, int value) {
    if (column_next(c, valid) < 0 || grow_bitmap(&c->data, &c->data_cap, (size_t)c->length) < 0) {
        return -1;
    }
    if (valid && value) {
        c->data[c->length / 8] |= (uint8_t)(1u << (c->length % 8));
    }
    c->length++;
    return 0;
}

static int append_i64(Column *c, int64_t value) { return column_fixed(c, &value, 8, 1); }
static int append_i32(Column *c, int32_t value) { return column_fixed(c, &value, 4, 1); }
static int append_f64(Column *c, double value) { return column_fixed(c, &value, 8, 1); }

static int append_null(Column *c) {
    switch (c->kind) {
    case COL_STR:
        if (column_next(c, 0) < 0) {
            return -1;
        }
        c->offsets[c->length + 1] = c->offsets[c->length];
        c->length++;
        return 0;
    case COL_I32:
        return column_fixed(c, NULL, 4, 0);
    case COL_BOOL:
        return column_boolean(c, 0, 0);
    default:
        return column_fixed(c, NULL, 8, 0);
    }
}

static int append_bool(Column *c, int value) { return column_boolean(c, 1, value); }

static int append_bytes(Column *c, const char *text, Py_ssize_t size) {
    if (column_next(c, 1) < 0) {
        return -1;
    }
    int64_t end = (int64_t)c->offsets[c->length] + size;
    if (end > INT32_MAX) {
        /* More than a string column's 2 GiB in one slice: the Python converter takes it. */
        PyErr_SetString(PyExc_OverflowError, "string column over 2 GiB");
        return -1;
    }
    if (grow((void **)&c->data, &c->data_cap, (size_t)end, 1) < 0) {
        return -1;
    }
    memcpy(c->data + c->data_len, text, (size_t)size);
    c->data_len = (size_t)end;
    c->offsets[c->length + 1] = (int32_t)end;
    c->length++;
    return 0;
}

/* Room for `rows` rows (and `text_bytes` of text) before the first append: growing costs copies. */
static int column_reserve(Column *c, size_t rows, size_t text_bytes) {
    if (grow_bitmap(&c->validity, &c->validity_cap, rows) < 0) {
        return -1;
    }
    switch (c->kind) {
    case COL_STR:
        return grow((void **)&c->offsets, &c->offsets_cap, rows + 1, sizeof(int32_t)) < 0 ||
                       grow((void **)&c->data, &c->data_cap, text_bytes, 1) < 0
                   ? -1
                   : 0;
    case COL_BOOL:
        return grow_bitmap(&c->data, &c->data_cap, rows);
    case COL_I32:
        return grow((void **)&c->data, &c->data_cap, rows * 4, 1);
    default:
        return grow((void **)&c->data, &c->data_cap, rows * 8, 1);
    }
}

static void column_free(Column *c) {
    free(c->validity);
    free(c->data);
    free(c->offsets);
    memset(c, 0, sizeof(*c));
}

/* ---- export ---- */

typedef struct {
    Column column;
    const void *buffers[3];
} ChildData;

typedef struct {
    const void *buffers[1];
    struct ArrowArray **children;
    int64_t n_children;
} ParentData;

static void release_child(struct ArrowArray *array) {
    ChildData *data = (ChildData *)array->private_data;
    column_free(&data->column);
    free(data);
    array->release = NULL;
}

static void release_parent(struct ArrowArray *array) {
    ParentData *data = (ParentData *)array->private_data;
    for (int64_t i = 0; i < data->n_children; i++) {
        struct ArrowArray *child = data->children[i];
        if (child->release != NULL) {
            child->release(child);
        }
        free(child);
    }
    free(data->children);
    free(data);
    array->release = NULL;
}

static void capsule_destructor(PyObject *capsule) {
    struct ArrowArray *array = (struct ArrowArray *)PyCapsule_GetPointer(capsule, "arrow_array");
    if (array == NULL) {
        PyErr_Clear();
        return;
    }
    if (array->release != NULL) {
        array->release(array);
    }
    free(array);
}

/* Moves the columns into a struct array (a record batch) in a capsule; the columns are left empty. */
static PyObject *export_batch(Column *columns, int count, int64_t rows) {
    struct ArrowArray *parent = calloc(1, sizeof(struct ArrowArray));
    ParentData *parent_data = calloc(1, sizeof(ParentData));
    struct ArrowArray **children = calloc((size_t)count, sizeof(struct ArrowArray *));
    if (parent == NULL || parent_data == NULL || children == NULL) {
        free(parent);
        free(parent_data);
        free(children);
        return PyErr_NoMemory();
    }
    parent_data->children = children;
    for (int i = 0; i < count; i++) {
        struct ArrowArray *child = calloc(1, sizeof(struct ArrowArray));
        ChildData *data = calloc(1, sizeof(ChildData));
        if (child == NULL || data == NULL) {
            free(child);
            free(data);
            release_parent(&(struct ArrowArray){.private_data = parent_data});
            free(parent);
            return PyErr_NoMemory();
        }
        data->column = columns[i];
        memset(&columns[i], 0, sizeof(Column));
        columns[i].kind = data->column.kind;
        Column *c = &data->column;
        if (c->kind == COL_STR && c->length == 0) {
            /* An empty string column still needs its one offset. */
            free(c->offsets);
            c->offsets = calloc(1, sizeof(int32_t));
            if (c->offsets == NULL) {
                free(child);
                column_free(c);
                free(data);
                release_parent(&(struct ArrowArray){.private_data = parent_data});
                free(parent);
                return PyErr_NoMemory();
            }
        }
        data->buffers[0] = c->null_count ? c->validity : NULL;
        if (c->kind == COL_STR) {
            data->buffers[1] = c->offsets;
            data->buffers[2] = c->data;
            child->n_buffers = 3;
        } else {
            data->buffers[1] = c->data;
            child->n_buffers = 2;
        }
        child->length = c->length;
        child->null_count = c->null_count;
        child->buffers = data->buffers;
        child->release = release_child;
        child->private_data = data;
        children[i] = child;
        parent_data->n_children = i + 1;
    }
    parent->length = rows;
    parent->n_buffers = 1;
    parent->buffers = parent_data->buffers;
    parent->n_children = count;
    parent->children = children;
    parent->release = release_parent;
    parent->private_data = parent_data;
    PyObject *capsule = PyCapsule_New(parent, "arrow_array", capsule_destructor);
    if (capsule == NULL) {
        release_parent(parent);
        free(parent);
    }
    return capsule;
}

/* ---- many record batches as one ArrowArrayStream ----
 * pyarrow lets go of the GIL for each import; a thread that lets go of it waits up to a switch interval
 * (5 ms) to get it back from a busy application. Imported one by one, the parts of a write cycle (512
 * spans each, from the exporter) cost the writer hundreds of such waits; as one stream, two per table.
 */
typedef struct {
    struct ArrowSchema schema; /* moved in; handed out (moved) by the one get_schema it answers */
    struct ArrowArray *arrays; /* moved in */
    Py_ssize_t count, next;
} StreamData;

static int stream_get_schema(struct ArrowArrayStream *stream, struct ArrowSchema *out) {
    StreamData *data = (StreamData *)stream->private_data;
    if (data->schema.release == NULL) {
        return EINVAL; /* asked twice: pyarrow asks once */
    }
    *out = data->schema;
    data->schema.release = NULL;
    return 0;
}

static int stream_get_next(struct ArrowArrayStream *stream, struct ArrowArray *out) {
    StreamData *data = (StreamData *)stream->private_data;
    if (data->next >= data->count) {
        out->release = NULL; /* the end */
        return 0;
    }
    *out = data->arrays[data->next];
    data->arrays[data->next].release = NULL;
    data->next++;
    return 0;
}

static const char *stream_get_last_error(struct ArrowArrayStream *stream) {
    (void)stream;
    return NULL;
}

static void stream_release(struct ArrowArrayStream *stream) {
    StreamData *data = (StreamData *)stream->private_data;
    for (Py_ssize_t i = data->next; i < data->count; i++) {
        if (data->arrays[i].release != NULL) {
            data->arrays[i].release(&data->arrays[i]);
        }
    }
    if (data->schema.release != NULL) {
        data->schema.release(&data->schema);
    }
    free(data->arrays);
    free(data);
    stream->release = NULL;
}

static void stream_capsule_destructor(PyObject *capsule) {
    struct ArrowArrayStream *stream = (struct ArrowArrayStream *)PyCapsule_GetPointer(capsule, "arrow_array_stream");
    if (stream == NULL) {
        PyErr_Clear();
        return;
    }
    if (stream->release != NULL) {
        stream->release(stream);
    }
    free(stream);
}

/*
 * stream(arrays: list of "arrow_array" capsules, schema: "arrow_schema" capsule) -> "arrow_array_stream"
 * capsule of those record batches, in order. Moves the arrays and the schema out of their capsules (which
 * are then empty: each capsule is read once).
 */
static PyObject *stream(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "stream(arrays: list, schema: capsule)");
        return NULL;
    }
    PyObject *list = args[0];
    Py_ssize_t count = PyList_GET_SIZE(list);
    struct ArrowSchema *schema = (struct ArrowSchema *)PyCapsule_GetPointer(args[1], "arrow_schema");
    if (schema == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        struct ArrowArray *array = (struct ArrowArray *)PyCapsule_GetPointer(PyList_GET_ITEM(list, i), "arrow_array");
        if (array == NULL) {
            return NULL;
        }
        if (array->release == NULL) {
            PyErr_SetString(PyExc_ValueError, "an array capsule that was already read");
            return NULL;
        }
    }
    if (schema->release == NULL) {
        PyErr_SetString(PyExc_ValueError, "a schema capsule that was already read");
        return NULL;
    }
    struct ArrowArrayStream *out = calloc(1, sizeof(struct ArrowArrayStream));
    StreamData *data = calloc(1, sizeof(StreamData));
    struct ArrowArray *arrays = calloc((size_t)(count ? count : 1), sizeof(struct ArrowArray));
    if (out == NULL || data == NULL || arrays == NULL) {
        free(out);
        free(data);
        free(arrays);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        struct ArrowArray *array = (struct ArrowArray *)PyCapsule_GetPointer(PyList_GET_ITEM(list, i), "arrow_array");
        arrays[i] = *array;
        array->release = NULL;
    }
    data->schema = *schema;
    schema->release = NULL;
    data->arrays = arrays;
    data->count = count;
    out->get_schema = stream_get_schema;
    out->get_next = stream_get_next;
    out->get_last_error = stream_get_last_error;
    out->release = stream_release;
    out->private_data = data;
    PyObject *capsule = PyCapsule_New(out, "arrow_array_stream", stream_capsule_destructor);
    if (capsule == NULL) {
        stream_release(out);
        free(out);
    }
    return capsule;
}

/* ---- configuration: the SDK's classes and Python helpers (convert.py), the rules (rules.py) ---- */

typedef struct {
    PyObject *status_error;
    PyObject *status_names;   /* dict StatusCode -> str */
    PyObject *kind_names;     /* dict SpanKind -> str */
    PyObject *bounded_list;   /* the SDK's BoundedList class (its deque is read directly) */
    PyObject *bounded_attributes; /* the SDK's BoundedAttributes class (its `dropped` is read directly) */
    /* Classes whose public accessors return their private fields: those are read without a call. */
    PyObject *sdk_span_types; /* tuple: spans whose dropped_* properties are the SDK's */
    PyObject *status_type;
    PyObject *event_type;
    PyObject *link_type;
    PyObject *orjson_dumps;
    PyObject *attributes_json; /* the safe path when orjson refuses */
    PyObject *utf8;            /* lone surrogates -> replacement characters */
    PyObject *io_payload;
    PyObject *error_message;
    PyObject *sequence;        /* conventions.step_sequence, for values that are not plain ints */
    PyObject *declared_result; /* a CI/CD result value -> our status */
    PyObject *scope_type;      /* InstrumentationScope */
} Config;

/* The recognition rules `recognise` and `workflow_status` read (rules.RECOGNITION, by these names). */
typedef struct {
    PyObject *role_step;
    PyObject *role_execution;
    PyObject *execution_id_keys;
    PyObject *workflow_id_keys;
    PyObject *trigger_type_keys;
    PyObject *triggered_by_keys;
    PyObject *config_version_keys;
    PyObject *step_name_keys;
    PyObject *step_status_keys;
    PyObject *step_type_keys;
    PyObject *step_sequence_keys;
    PyObject *step_parent_keys;
    PyObject *execution_result_key; /* a CI/CD result value: `declared_result` maps it */
    PyObject *step_result_key;
    PyObject *capture_io_key;
    PyObject *completed;
    PyObject *failed;
    PyObject *skipped;
    PyObject *compensated;
    PyObject *io_events; /* frozenset of event names that carry a payload */
    PyObject *io_output_event;
} Rules;

static Config config;
static Rules rules;
static RoleKeys role_keys;
static int configured = 0;

/* Attribute names read from SDK objects, interned once. */
static PyObject *s_context, *s_name, *s_kind, *s_parent, *s_start_time, *s_end_time, *s_attributes,
    *s_events, *s_links, *s_resource, *s_status, *s_scope, *s_status_code, *s_description,
    *s_timestamp, *s_dq, *s_inner_dict, *s_dropped_attributes, *s_dropped_events, *s_dropped_links,
    *s_public_attributes, *s_public_context, *s_public_name, *s_status_code_field, *s_description_field,
    *s_timestamp_field, *s_dropped, *s_version, *s_public_version;

static PyObject *Unsupported; /* raised for a span type this module does not read */

static int intern_names(void) {
#define INTERN(var, text)                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL) {                                        \
        return -1;                                                                                 \
    }
    INTERN(s_context, "_context");
    INTERN(s_name, "_name");
    INTERN(s_kind, "_kind");
    INTERN(s_parent, "_parent");
    INTERN(s_start_time, "_start_time");
    INTERN(s_end_time, "_end_time");
    INTERN(s_attributes, "_attributes");
    INTERN(s_events, "_events");
    INTERN(s_links, "_links");
    INTERN(s_resource, "_resource");
    INTERN(s_status, "_status");
    INTERN(s_scope, "_instrumentation_scope");
    INTERN(s_status_code, "status_code");
    INTERN(s_description, "description");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_dq, "_dq");
    INTERN(s_inner_dict, "_dict");
    INTERN(s_dropped_attributes, "dropped_attributes");
    INTERN(s_dropped_events, "dropped_events");
    INTERN(s_dropped_links, "dropped_links");
    INTERN(s_public_attributes, "attributes");
    INTERN(s_public_context, "context");
    INTERN(s_public_name, "name");
    INTERN(s_status_code_field, "_status_code");
    INTERN(s_description_field, "_description");
    INTERN(s_timestamp_field, "_timestamp");
    INTERN(s_dropped, "dropped");
    INTERN(s_version, "_version");
    INTERN(s_public_version, "version");
#undef INTERN
    return 0;
}

/*
 * configure(settings, rules): the SDK's classes and the Python helpers (`settings`, a dict from
 * convert.py), and the recognition rules (`rules`, rules.RECOGNITION). Before any conversion; again
 * replaces them all.
 */
static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(settings: dict, rules: Mapping)");
        return NULL;
    }
    PyObject *settings = args[0];
    struct {
        const char *key;
        PyObject **slot;
    } entries[] = {
        {"status_error", &config.status_error},
        {"status_names", &config.status_names},
        {"kind_names", &config.kind_names},
        {"bounded_list", &config.bounded_list},
        {"bounded_attributes", &config.bounded_attributes},
        {"sdk_span_types", &config.sdk_span_types},
        {"status_type", &config.status_type},
        {"event_type", &config.event_type},
        {"link_type", &config.link_type},
        {"orjson_dumps", &config.orjson_dumps},
        {"attributes_json", &config.attributes_json},
        {"utf8", &config.utf8},
        {"io_payload", &config.io_payload},
        {"error_message", &config.error_message},
        {"sequence", &config.sequence},
        {"declared_result", &config.declared_result},
        {"scope_type", &config.scope_type},
    };
    size_t count = sizeof(entries) / sizeof(entries[0]);
    for (size_t i = 0; i < count; i++) {
        if (PyDict_GetItemString(settings, entries[i].key) == NULL) {
            PyErr_Format(PyExc_KeyError, "configure() needs %s", entries[i].key);
            return NULL;
        }
    }
    PyObject *status_names = PyDict_GetItemString(settings, "status_names");
    PyObject *kind_names = PyDict_GetItemString(settings, "kind_names");
    PyObject *span_types = PyDict_GetItemString(settings, "sdk_span_types");
    if (!PyTuple_Check(span_types) || !PyDict_Check(status_names) || !PyDict_Check(kind_names)) {
        PyErr_SetString(PyExc_TypeError, "configure(): unexpected setting types");
        return NULL;
    }
    const RuleEntry rule_entries[] = {
        {"role_step", RULE_TEXT, &rules.role_step},
        {"role_execution", RULE_TEXT, &rules.role_execution},
        {"execution_id_keys", RULE_KEYS, &rules.execution_id_keys},
        {"workflow_id_keys", RULE_KEYS, &rules.workflow_id_keys},
        {"trigger_type_keys", RULE_KEYS, &rules.trigger_type_keys},
        {"triggered_by_keys", RULE_KEYS, &rules.triggered_by_keys},
        {"config_version_keys", RULE_KEYS, &rules.config_version_keys},
        {"step_name_keys", RULE_KEYS, &rules.step_name_keys},
        {"step_status_keys", RULE_KEYS, &rules.step_status_keys},
        {"step_type_keys", RULE_KEYS, &rules.step_type_keys},
        {"step_sequence_keys", RULE_KEYS, &rules.step_sequence_keys},
        {"step_parent_keys", RULE_KEYS, &rules.step_parent_keys},
        {"execution_result_key", RULE_TEXT, &rules.execution_result_key},
        {"step_result_key", RULE_TEXT, &rules.step_result_key},
        {"capture_io_key", RULE_TEXT, &rules.capture_io_key},
        {"status_completed", RULE_TEXT, &rules.completed},
        {"status_failed", RULE_TEXT, &rules.failed},
        {"status_skipped", RULE_TEXT, &rules.skipped},
        {"status_compensated", RULE_TEXT, &rules.compensated},
        {"io_events", RULE_SET, &rules.io_events},
        {"io_output_event", RULE_TEXT, &rules.io_output_event},
    };
    /* The rules first: each is checked before anything is taken. */
    if (rules_read(args[1], rule_entries, sizeof(rule_entries) / sizeof(rule_entries[0])) < 0 ||
        role_keys_read(args[1], &role_keys) < 0) {
        return NULL;
    }
    for (size_t i = 0; i < count; i++) {
        Py_XSETREF(*entries[i].slot, Py_NewRef(PyDict_GetItemString(settings, entries[i].key)));
    }
    configured = 1;
    Py_RETURN_NONE;
}

/* ---- reading values ---- */

/* Text into a string column; None is null. Lone surrogates go through convert.utf8 (replacement). */
static int append_text(Column *c, PyObject *value) {
    if (value == Py_None) {
        return append_null(c);
    }
    if (!PyUnicode_Check(value)) {
        PyErr_Format(PyExc_TypeError, "expected text, got %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(value, &size);
    if (text != NULL) {
        return append_bytes(c, text, size);
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *clean = PyObject_CallOneArg(config.utf8, value);
    if (clean == NULL) {
        return -1;
    }
    text = PyUnicode_AsUTF8AndSize(clean, &size);
    int result = text == NULL ? -1 : append_bytes(c, text, size);
    Py_DECREF(clean);
    return result;
}

/* `str(value)` (conventions._text) into a string column. */
static int append_str_of(Column *c, PyObject *value) {
    if (value == NULL || value == Py_None) {
        return append_null(c);
    }
    if (PyUnicode_CheckExact(value)) {
        return append_text(c, value);
    }
    PyObject *text = PyObject_Str(value);
    if (text == NULL) {
        return -1;
    }
    int result = append_text(c, text);
    Py_DECREF(text);
    return result;
}

/* Attributes as a JSON object (convert.attributes_json). `attributes` is a dict or NULL. */
static int append_json(Column *c, PyObject *attributes) {
    if (attributes == NULL || PyDict_GET_SIZE(attributes) == 0) {
        return append_bytes(c, "{}", 2);
    }
    PyObject *encoded = PyObject_CallOneArg(config.orjson_dumps, attributes);
    if (encoded != NULL) {
        int result = append_bytes(c, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
        Py_DECREF(encoded);
        return result;
    }
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *text = PyObject_CallOneArg(config.attributes_json, attributes);
    if (text == NULL) {
        return -1;
    }
    int result = append_text(c, text);
    Py_DECREF(text);
    return result;
}

/* The plain dict behind SDK attributes (convert.plain_attributes); a new reference, NULL on error. */
static PyObject *plain_attributes(PyObject *attributes) {
    if (attributes == NULL || attributes == Py_None) {
        return PyDict_New();
    }
    if (PyDict_Check(attributes)) {
        Py_INCREF(attributes);
        return attributes;
    }
    if (PyObject_TypeCheck(attributes, (PyTypeObject *)config.bounded_attributes)) {
        PyObject *inner = PyObject_GetAttr(attributes, s_inner_dict);
        if (inner != NULL && PyDict_Check(inner)) {
            return inner;
        }
        Py_XDECREF(inner);
        PyErr_Clear();
    }
    /* another Mapping: copied, as convert.plain_attributes does */
    return PyObject_CallOneArg((PyObject *)&PyDict_Type, attributes);
}

/* Nanoseconds to microseconds, rounding down as Python's `ns // 1000` does. */
static int64_t floor_micros(long long ns) {
    long long us = ns / 1000;
    return (ns % 1000 != 0 && ns < 0) ? us - 1 : us;
}

/* An int of nanoseconds to microseconds. */
static int micros(PyObject *value, int64_t *out) {
    long long ns = PyLong_AsLongLong(value);
    if (ns == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = floor_micros(ns);
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* An id as lowercase hex of `width` digits (convert.hex_trace_id/hex_span_id). */
static int append_hex(Column *c, PyObject *id, int width) {
    if (!PyLong_CheckExact(id)) {
        PyErr_SetString(PyExc_TypeError, "ids must be ints");
        return -1;
    }
    unsigned char bytes[16];
    int length = width / 2;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t needed = PyLong_AsNativeBytes(id, bytes, length,
                                             Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER |
                                                 Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (needed < 0) {
        return -1;
    }
    if (needed > length) {
        PyErr_SetString(PyExc_OverflowError, "id too wide");
        return -1;
    }
#else
    if (_PyLong_AsByteArray((PyLongObject *)id, bytes, (size_t)length, 0, 0) < 0) {
        return -1;
    }
#endif
    char text[32];
    for (int i = 0; i < length; i++) {
        text[2 * i] = HEX[bytes[i] >> 4];
        text[2 * i + 1] = HEX[bytes[i] & 15];
    }
    return append_bytes(c, text, width);
}

/* The trace and span id of a SpanContext (a tuple: trace_id, span_id, ...); borrowed. */
static int context_ids(PyObject *context, PyObject **trace_id, PyObject **span_id) {
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 2) {
        PyErr_SetString(Unsupported, "span context is not a SpanContext");
        return -1;
    }
    *trace_id = PyTuple_GET_ITEM(context, 0);
    *span_id = PyTuple_GET_ITEM(context, 1);
    return 0;
}

/* ---- the tables ----
 * Each table's columns in order: the enum a row is built by, the builder's kind, and the name and Arrow
 * type of the column, which must be those of otel_workflow/ingest/columns.py (`columns()` tells them;
 * convert.py checks them when it configures this module, tests/test_columns.py against a real file).
 */

#define SPAN_COLUMNS(X)                                                                            \
    X(S_TRACE_ID, "trace_id", COL_STR, "string")                                                    \
    X(S_SPAN_ID, "span_id", COL_STR, "string")                                                      \
    X(S_PARENT_SPAN_ID, "parent_span_id", COL_STR, "string")                                        \
    X(S_NAME, "name", COL_STR, "string")                                                            \
    X(S_KIND, "kind", COL_STR, "string")                                                            \
    X(S_START, "start_time", COL_I64, "timestamp[us, tz=UTC]")                                      \
    X(S_END, "end_time", COL_I64, "timestamp[us, tz=UTC]")                                          \
    X(S_DURATION, "duration_ms", COL_F64, "double")                                                 \
    X(S_STATUS_CODE, "status_code", COL_STR, "string")                                              \
    X(S_STATUS_MESSAGE, "status_message", COL_STR, "string")                                        \
    X(S_SERVICE, "service_name", COL_STR, "string")                                                 \
    X(S_RESOURCE_ATTRIBUTES, "resource_attributes", COL_STR, "string")                              \
    X(S_SCOPE_NAME, "scope_name", COL_STR, "string")                                                \
    X(S_SCOPE_VERSION, "scope_version", COL_STR, "string")                                          \
    X(S_ATTRIBUTES, "attributes", COL_STR, "string")                                                \
    X(S_DROPPED_ATTRIBUTES, "dropped_attributes", COL_I32, "int32")                                 \
    X(S_DROPPED_EVENTS, "dropped_events", COL_I32, "int32")                                         \
    X(S_DROPPED_LINKS, "dropped_links", COL_I32, "int32")                                           \
    X(S_ROLE, "workflow_role", COL_STR, "string")                                                   \
    X(S_EXECUTION_ID, "execution_id", COL_STR, "string")                                            \
    X(S_WORKFLOW_ID, "workflow_id", COL_STR, "string")                                              \
    X(S_STEP_NAME, "step_name", COL_STR, "string")                                                  \
    X(S_STEP_TYPE, "step_type", COL_STR, "string")                                                  \
    X(S_STEP_SEQUENCE, "step_sequence", COL_I64, "int64")                                           \
    X(S_PARENT_STEP_ID, "parent_step_id", COL_STR, "string")                                        \
    X(S_WORKFLOW_STATUS, "workflow_status", COL_STR, "string")                                      \
    X(S_ERROR_MESSAGE, "error_message", COL_STR, "string")                                          \
    X(S_TRIGGER_TYPE, "trigger_type", COL_STR, "string")                                            \
    X(S_TRIGGERED_BY, "triggered_by", COL_STR, "string")                                            \
    X(S_CONFIG_VERSION, "config_version", COL_STR, "string")                                        \
    X(S_CAPTURE_IO, "capture_io", COL_BOOL, "bool")                                                 \
    X(S_INPUT, "input_data", COL_STR, "string")                                                     \
    X(S_OUTPUT, "output_data", COL_STR, "string")

#define EVENT_COLUMNS(X)                                                                           \
    X(E_TRACE_ID, "trace_id", COL_STR, "string")                                                    \
    X(E_SPAN_ID, "span_id", COL_STR, "string")                                                      \
    X(E_INDEX, "event_index", COL_I32, "int32")                                                     \
    X(E_NAME, "name", COL_STR, "string")                                                            \
    X(E_TIMESTAMP, "timestamp", COL_I64, "timestamp[us, tz=UTC]")                                   \
    X(E_ATTRIBUTES, "attributes", COL_STR, "string")

#define LINK_COLUMNS(X)                                                                            \
    X(L_TRACE_ID, "trace_id", COL_STR, "string")                                                    \
    X(L_SPAN_ID, "span_id", COL_STR, "string")                                                      \
    X(L_INDEX, "link_index", COL_I32, "int32")                                                      \
    X(L_LINKED_TRACE_ID, "linked_trace_id", COL_STR, "string")                                      \
    X(L_LINKED_SPAN_ID, "linked_span_id", COL_STR, "string")                                        \
    X(L_ATTRIBUTES, "attributes", COL_STR, "string")

#define COLUMN_INDEX(index, name, kind, arrow) index,
#define COLUMN_KIND(index, name, kind, arrow) kind,
#define COLUMN_NAME(index, name, kind, arrow) {name, arrow},

typedef struct {
    const char *name;
    const char *arrow; /* the Arrow type, as pyarrow prints it */
} ColumnName;

enum { SPAN_COLUMNS(COLUMN_INDEX) S_COUNT };
static const ColumnKind SPAN_KINDS[S_COUNT] = {SPAN_COLUMNS(COLUMN_KIND)};
static const ColumnName SPAN_NAMES[S_COUNT] = {SPAN_COLUMNS(COLUMN_NAME)};

enum { EVENT_COLUMNS(COLUMN_INDEX) E_COUNT };
static const ColumnKind EVENT_KINDS[E_COUNT] = {EVENT_COLUMNS(COLUMN_KIND)};
static const ColumnName EVENT_NAMES[E_COUNT] = {EVENT_COLUMNS(COLUMN_NAME)};

enum { LINK_COLUMNS(COLUMN_INDEX) L_COUNT };
static const ColumnKind LINK_KINDS[L_COUNT] = {LINK_COLUMNS(COLUMN_KIND)};
static const ColumnName LINK_NAMES[L_COUNT] = {LINK_COLUMNS(COLUMN_NAME)};

#undef COLUMN_INDEX
#undef COLUMN_KIND
#undef COLUMN_NAME

typedef struct {
    Column spans[S_COUNT];
    Column events[E_COUNT];
    Column links[L_COUNT];
    int64_t span_rows;
    int64_t event_rows;
    int64_t link_rows;
    /* Resource -> (service_name, attributes_json), from the caller's cache. */
    PyObject *describe_resource;
    /* The last resource seen, with its Python-made description (spans share it). */
    PyObject *resource;
    PyObject *resource_row;
} Batch;

/* Columns for `rows` spans, with room for as many events (a guess) and a few links. */
static int batch_init(Batch *b, size_t rows) {
    memset(b, 0, sizeof(*b));
    int bad = 0;
    for (int i = 0; i < S_COUNT; i++) {
        b->spans[i].kind = SPAN_KINDS[i];
        size_t width = i == S_TRACE_ID ? 32 : i == S_SPAN_ID || i == S_PARENT_SPAN_ID ? 16 : 8;
        bad = bad || column_reserve(&b->spans[i], rows, rows * width) < 0;
    }
    for (int i = 0; i < E_COUNT; i++) {
        b->events[i].kind = EVENT_KINDS[i];
        bad = bad || column_reserve(&b->events[i], rows, rows * 16) < 0;
    }
    for (int i = 0; i < L_COUNT; i++) {
        b->links[i].kind = LINK_KINDS[i];
    }
    return bad ? -1 : 0;
}

static void batch_free(Batch *b) {
    for (int i = 0; i < S_COUNT; i++) {
        column_free(&b->spans[i]);
    }
    for (int i = 0; i < E_COUNT; i++) {
        column_free(&b->events[i]);
    }
    for (int i = 0; i < L_COUNT; i++) {
        column_free(&b->links[i]);
    }
    Py_CLEAR(b->describe_resource);
    Py_CLEAR(b->resource);
    Py_CLEAR(b->resource_row);
}

/* A resource's (service_name, attributes_json), cached by identity. */
static PyObject *described(PyObject *helper, PyObject *object, PyObject **last, PyObject **row) {
    if (*row != NULL && *last == object) {
        return *row;
    }
    PyObject *made = PyObject_CallOneArg(helper, object);
    if (made == NULL) {
        return NULL;
    }
    if (!PyTuple_Check(made) || PyTuple_GET_SIZE(made) != 2) {
        Py_DECREF(made);
        PyErr_SetString(PyExc_TypeError, "a description must be a pair");
        return NULL;
    }
    Py_INCREF(object);
    Py_XSETREF(*last, object);
    Py_XSETREF(*row, made);
    return made;
}

/*
 * `obj.<public>` (a new reference). For an object of class `exact`, whose accessor returns its
 * private field, the field is read instead: a property call costs more than the rest of a value's
 * conversion. (Not through `__dict__`: asking for it makes CPython build a dict per object.)
 */
static PyObject *member(PyObject *obj, PyObject *exact, PyObject *private_name, PyObject *public_name) {
    return PyObject_GetAttr(obj, (PyObject *)Py_TYPE(obj) == exact ? private_name : public_name);
}

/*
 * The elements of events or links (a new reference to a sequence): the SDK's BoundedList by its
 * deque (without the lock and copy of its __iter__), read by index. A span that is still running (a
 * live row) may gain events while Python code runs between two of ours; reading by index up to the
 * length seen first never fails on that (the live row does not use the events).
 */
static PyObject *elements(PyObject *items) {
    if (Py_TYPE(items) == (PyTypeObject *)config.bounded_list) {
        return PyObject_GetAttr(items, s_dq);
    }
    Py_INCREF(items);
    return items;
}

/* The name of an enum member (a SpanKind or StatusCode) by identity: Enum.__hash__ is Python code. */
static PyObject *enum_name(PyObject *names, PyObject *member) {
    Py_ssize_t at = 0;
    PyObject *key, *value;
    while (PyDict_Next(names, &at, &key, &value)) {
        if (key == member) {
            return value;
        }
    }
    PyErr_SetString(PyExc_KeyError, "unknown span kind or status code");
    return NULL;
}

static int int_property(PyObject *span, PyObject *name, int32_t *out) {
    PyObject *value = PyObject_GetAttr(span, name);
    if (value == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (n < INT32_MIN || n > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "dropped count beyond INTEGER");
        return -1;
    }
    *out = (int32_t)n;
    return 0;
}

/* span.dropped_attributes/events/links; for the SDK's classes read from its bounded containers. */
static int dropped_counts(PyObject *span, PyObject *attributes, PyObject *events, PyObject *links,
                          int32_t dropped[3]) {
    int sdk = PySequence_Contains(config.sdk_span_types, (PyObject *)Py_TYPE(span));
    if (sdk <= 0) {
        return sdk < 0 || int_property(span, s_dropped_attributes, &dropped[0]) < 0 ||
                       int_property(span, s_dropped_events, &dropped[1]) < 0 ||
                       int_property(span, s_dropped_links, &dropped[2]) < 0
                   ? -1
                   : 0;
    }
    PyObject *containers[3] = {attributes, events, links};
    PyObject *classes[3] = {config.bounded_attributes, config.bounded_list, config.bounded_list};
    for (int i = 0; i < 3; i++) {
        dropped[i] = 0;
        if (PyObject_TypeCheck(containers[i], (PyTypeObject *)classes[i]) &&
            int_property(containers[i], s_dropped, &dropped[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The span an event or link row belongs to, and where its events put the span's input/output. */
typedef struct {
    PyObject *trace_id;
    PyObject *span_id;
    PyObject **input;
    PyObject **output;
} Owner;

typedef int (*AddElement)(Batch *b, PyObject *element, int32_t index, Owner *owner);

/* `add` for each element of a span's events or links, with its index. */
static int add_each(Batch *b, PyObject *items, AddElement add, Owner *owner) {
    PyObject *list = elements(items);
    Py_ssize_t count = list == NULL ? -1 : PyObject_Size(list);
    int status = count < 0 ? -1 : 0;
    for (Py_ssize_t i = 0; status == 0 && i < count; i++) {
        PyObject *element = PySequence_GetItem(list, i);
        status = element == NULL ? -1 : add(b, element, (int32_t)i, owner);
        Py_XDECREF(element);
    }
    Py_XDECREF(list);
    return status;
}

/* Events and links rows begin alike: the span they belong to, and their index in it. */
_Static_assert((int)E_TRACE_ID == (int)L_TRACE_ID && (int)E_SPAN_ID == (int)L_SPAN_ID && (int)E_INDEX == (int)L_INDEX,
               "events and links share their first three columns");
static int append_child_key(Column *c, Owner *owner, int32_t index) {
    return (append_hex(&c[E_TRACE_ID], owner->trace_id, 32) < 0 ||
            append_hex(&c[E_SPAN_ID], owner->span_id, 16) < 0 || append_i32(&c[E_INDEX], index) < 0)
               ? -1
               : 0;
}

/* One span_events row; a payload event also gives the span's input or output. */
static int add_event(Batch *b, PyObject *event, int32_t index, Owner *owner) {
    PyObject *name = member(event, config.event_type, s_name, s_public_name);
    PyObject *raw = name ? member(event, config.event_type, s_attributes, s_public_attributes) : NULL;
    PyObject *stamp = raw ? member(event, config.event_type, s_timestamp_field, s_timestamp) : NULL;
    PyObject *attributes = stamp ? plain_attributes(raw) : NULL;
    int64_t at = 0;
    int status = attributes == NULL ? -1 : micros(stamp, &at);
    if (status == 0 && PyUnicode_Check(name)) {
        int io = PySet_Contains(rules.io_events, name);
        if (io < 0) {
            status = -1;
        } else if (io) {
            PyObject *payload = PyObject_CallOneArg(config.io_payload, attributes);
            if (payload == NULL) {
                status = -1;
            } else {
                int is_output = PyUnicode_Compare(name, rules.io_output_event) == 0;
                Py_XSETREF(*(is_output ? owner->output : owner->input), payload);
            }
        }
    }
    if (status == 0) {
        Column *c = b->events;
        status = (append_child_key(c, owner, index) < 0 || append_text(&c[E_NAME], name) < 0 ||
                  append_i64(&c[E_TIMESTAMP], at) < 0 || append_json(&c[E_ATTRIBUTES], attributes) < 0)
                     ? -1
                     : 0;
        b->event_rows += status == 0;
    }
    Py_XDECREF(name);
    Py_XDECREF(raw);
    Py_XDECREF(stamp);
    Py_XDECREF(attributes);
    return status;
}

/* One span_links row. */
static int add_link(Batch *b, PyObject *link, int32_t index, Owner *owner) {
    PyObject *context = member(link, config.link_type, s_context, s_public_context);
    PyObject *raw = context ? member(link, config.link_type, s_attributes, s_public_attributes) : NULL;
    PyObject *attributes = raw ? plain_attributes(raw) : NULL;
    PyObject *linked_trace, *linked_span;
    int status = (attributes == NULL || context_ids(context, &linked_trace, &linked_span) < 0) ? -1 : 0;
    if (status == 0) {
        Column *c = b->links;
        status = (append_child_key(c, owner, index) < 0 ||
                  append_hex(&c[L_LINKED_TRACE_ID], linked_trace, 32) < 0 ||
                  append_hex(&c[L_LINKED_SPAN_ID], linked_span, 16) < 0 ||
                  append_json(&c[L_ATTRIBUTES], attributes) < 0)
                     ? -1
                     : 0;
        b->link_rows += status == 0;
    }
    Py_XDECREF(context);
    Py_XDECREF(raw);
    Py_XDECREF(attributes);
    return status;
}

/* What conventions.recognise lifts out of a span; every reference owned (or NULL for none). */
typedef struct {
    PyObject *role; /* rules.role_step, rules.role_execution or NULL */
    PyObject *execution_id;
    PyObject *workflow_id;
    PyObject *step_name;
    PyObject *step_type;
    PyObject *step_sequence; /* an int within BIGINT */
    PyObject *parent_step_id;
    PyObject *declared_status; /* text */
    PyObject *trigger_type;
    PyObject *triggered_by;
    PyObject *config_version;
    int capture_io;
} Recognised;

static void recognised_free(Recognised *r) {
    Py_CLEAR(r->role);
    Py_CLEAR(r->execution_id);
    Py_CLEAR(r->workflow_id);
    Py_CLEAR(r->step_name);
    Py_CLEAR(r->step_type);
    Py_CLEAR(r->step_sequence);
    Py_CLEAR(r->parent_step_id);
    Py_CLEAR(r->declared_status);
    Py_CLEAR(r->trigger_type);
    Py_CLEAR(r->triggered_by);
    Py_CLEAR(r->config_version);
}

/* A helper's answer for `value` (a new reference), NULL when it answers None or there is no value. */
static PyObject *ask(PyObject *helper, PyObject *value) {
    if (value == NULL) {
        return NULL;
    }
    PyObject *answer = PyObject_CallOneArg(helper, value);
    if (answer == Py_None) {
        Py_DECREF(answer);
        return NULL;
    }
    return answer;
}

/* An attribute's value as a new reference, NULL when absent (check PyErr_Occurred). */
static PyObject *get(PyObject *attributes, PyObject *key) {
    PyObject *value = PyDict_GetItemWithError(attributes, key);
    Py_XINCREF(value);
    return value;
}

/* `str(value)` in place (conventions._text); stays NULL for none. */
static int to_text(PyObject **value) {
    if (*value == NULL || PyUnicode_CheckExact(*value)) {
        return 0;
    }
    Py_SETREF(*value, PyObject_Str(*value));
    return *value == NULL ? -1 : 0;
}

static int recognise(PyObject *name, PyObject *attributes, Recognised *r) {
    int error = 0, step, execution;
    if (span_role(name, attributes, &role_keys, &step, &execution) < 0) {
        return -1;
    }
    r->execution_id = pick(attributes, rules.execution_id_keys, &error);
    if (error || to_text(&r->execution_id) < 0) {
        return -1;
    }
    if (!step && !execution) {
        return 0;
    }
    r->role = step ? rules.role_step : rules.role_execution;
    Py_INCREF(r->role);
    r->workflow_id = pick(attributes, rules.workflow_id_keys, &error);
    if (error || to_text(&r->workflow_id) < 0) {
        return -1;
    }
    if (execution) {
        PyObject *result = get(attributes, rules.execution_result_key);
        r->declared_status = ask(config.declared_result, result);
        Py_XDECREF(result);
        r->trigger_type = pick(attributes, rules.trigger_type_keys, &error);
        r->triggered_by = pick(attributes, rules.triggered_by_keys, &error);
        r->config_version = pick(attributes, rules.config_version_keys, &error);
        PyObject *capture = get(attributes, rules.capture_io_key);
        r->capture_io = capture == Py_True;
        Py_XDECREF(capture);
        if (error || PyErr_Occurred() || to_text(&r->trigger_type) < 0 || to_text(&r->triggered_by) < 0 ||
            to_text(&r->config_version) < 0) {
            return -1;
        }
        return 0;
    }
    r->step_name = pick(attributes, rules.step_name_keys, &error);
    if (error) {
        return -1;
    }
    if (r->step_name == NULL) {
        int prefixed = PyUnicode_Tailmatch(name, role_keys.step_prefix, 0, PY_SSIZE_T_MAX, -1);
        if (prefixed < 0) {
            return -1;
        }
        if (prefixed) {
            r->step_name =
                PyUnicode_Substring(name, PyUnicode_GET_LENGTH(role_keys.step_prefix), PY_SSIZE_T_MAX);
            if (r->step_name == NULL) {
                return -1;
            }
        } else {
            Py_INCREF(name);
            r->step_name = name;
        }
    }
    r->declared_status = pick(attributes, rules.step_status_keys, &error);
    if (!error && r->declared_status == NULL) {
        PyObject *result = get(attributes, rules.step_result_key);
        r->declared_status = ask(config.declared_result, result);
        Py_XDECREF(result);
    }
    r->step_type = pick(attributes, rules.step_type_keys, &error);
    PyObject *sequence = pick(attributes, rules.step_sequence_keys, &error);
    if (sequence != NULL) {
        int overflow = 0;
        long long n = PyLong_CheckExact(sequence) ? PyLong_AsLongLongAndOverflow(sequence, &overflow) : 0;
        if (PyLong_CheckExact(sequence) && !overflow && n != LLONG_MIN) {
            r->step_sequence = sequence; /* a plain int within BIGINT: the common case */
        } else {
            r->step_sequence = ask(config.sequence, sequence);
            Py_DECREF(sequence);
        }
    }
    r->parent_step_id = pick(attributes, rules.step_parent_keys, &error);
    if (error || PyErr_Occurred() || to_text(&r->step_name) < 0 || to_text(&r->declared_status) < 0 ||
        to_text(&r->step_type) < 0 || to_text(&r->parent_step_id) < 0) {
        return -1;
    }
    return 0;
}

static int equal(PyObject *a, PyObject *text) {
    return a != NULL && PyUnicode_Check(a) && PyUnicode_Compare(a, text) == 0;
}

/* The private fields of an SDK span, owned: a live span may change them while Python code runs. */
typedef struct {
    PyObject *context, *name, *kind, *parent, *start_time, *end_time, *attributes, *events, *links,
        *resource, *status, *scope;
} Fields;

static void fields_free(Fields *f) {
    PyObject **all = (PyObject **)f;
    for (size_t i = 0; i < sizeof(Fields) / sizeof(PyObject *); i++) {
        Py_CLEAR(all[i]);
    }
}

static int read_fields(PyObject *span, Fields *f) {
    PyObject *names[] = {s_context, s_name,  s_kind,     s_parent,   s_start_time, s_end_time,
                         s_attributes, s_events, s_links, s_resource, s_status, s_scope};
    PyObject **slots = (PyObject **)f;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((slots[i] = PyObject_GetAttr(span, names[i])) == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Format(Unsupported, "span without %U", names[i]);
            }
            return -1;
        }
    }
    return 0;
}

/* The times of a span in microseconds and its duration in ms, as convert.SpanConverter computes them. */
static int times(Fields *f, int64_t *start, int64_t *end, double *duration_ms) {
    long long start_ns = 0, end_ns;
    int truthy = PyObject_IsTrue(f->start_time); /* start_time or 0 */
    if (truthy < 0) {
        return -1;
    }
    if (truthy && ((start_ns = PyLong_AsLongLong(f->start_time)) == -1 && PyErr_Occurred())) {
        return -1;
    }
    end_ns = start_ns;
    if (f->end_time != Py_None && ((end_ns = PyLong_AsLongLong(f->end_time)) == -1 && PyErr_Occurred())) {
        return -1;
    }
    long long elapsed;
    if (__builtin_sub_overflow(end_ns, start_ns, &elapsed)) {
        PyErr_SetString(PyExc_OverflowError, "span duration beyond 64 bits");
        return -1;
    }
    *start = floor_micros(start_ns);
    *end = floor_micros(end_ns);
    *duration_ms = (double)elapsed / 1e6;
    return 0;
}

static PyObject *workflow_status(Recognised *r, int failed) {
    /* Compensation is the outcome even of a step that failed; a step that failed after skip() failed. */
    if (r->role == NULL) {
        return NULL;
    }
    if (equal(r->declared_status, rules.compensated)) {
        return rules.compensated;
    }
    if (failed) {
        return rules.failed;
    }
    return equal(r->declared_status, rules.skipped) ? rules.skipped : rules.completed;
}

static int add_span(Batch *b, PyObject *span) {
    Fields f = {0};
    Recognised r = {0};
    PyObject *attributes = NULL, *description = NULL, *scope_name = NULL, *scope_version = NULL,
             *input = NULL, *output = NULL, *error_message = NULL;
    int status = -1;
    if (read_fields(span, &f) < 0) {
        goto done;
    }
    if (f.context == Py_None) {
        status = 0; /* no context: left out, as the Python converter does */
        goto done;
    }
    PyObject *trace_id, *span_id, *parent_trace, *parent_span = NULL;
    if (context_ids(f.context, &trace_id, &span_id) < 0 ||
        (f.parent != Py_None && context_ids(f.parent, &parent_trace, &parent_span) < 0)) {
        goto done;
    }
    if (!PyUnicode_Check(f.name)) {
        PyErr_SetString(PyExc_TypeError, "span name is not text");
        goto done;
    }
    int64_t start, end;
    double duration_ms;
    if ((attributes = plain_attributes(f.attributes)) == NULL || times(&f, &start, &end, &duration_ms) < 0) {
        goto done;
    }
    PyObject *code = member(f.status, config.status_type, s_status_code_field, s_status_code);
    if (code == NULL) {
        goto done;
    }
    int is_error = code == config.status_error;
    PyObject *status_name = enum_name(config.status_names, code); /* borrowed: a constant */
    Py_DECREF(code);
    PyObject *kind_name = status_name ? enum_name(config.kind_names, f.kind) : NULL;
    if (kind_name == NULL) {
        goto done;
    }
    if ((description = member(f.status, config.status_type, s_description_field, s_description)) == NULL) {
        goto done;
    }
    PyObject *resource_row = described(b->describe_resource, f.resource, &b->resource, &b->resource_row);
    if (f.scope != Py_None &&
        ((scope_name = member(f.scope, config.scope_type, s_name, s_public_name)) == NULL ||
         (scope_version = member(f.scope, config.scope_type, s_version, s_public_version)) == NULL)) {
        goto done;
    }
    int32_t dropped[3];
    if (resource_row == NULL || recognise(f.name, attributes, &r) < 0 ||
        dropped_counts(span, f.attributes, f.events, f.links, dropped) < 0) {
        goto done;
    }
    /* The description stays alive while this span's row is built, even if a helper replaces it. */
    Py_INCREF(resource_row);
    int failed = is_error || equal(r.declared_status, rules.failed);
    int bad = 0;
    Owner owner = {trace_id, span_id, &input, &output};
    if ((f.events != Py_None && add_each(b, f.events, add_event, &owner) < 0) ||
        (f.links != Py_None && add_each(b, f.links, add_link, &owner) < 0) ||
        (failed && (error_message = PyObject_CallOneArg(config.error_message, span)) == NULL)) {
        bad = 1;
    }
    Column *c = b->spans;
    bad = bad || append_hex(&c[S_TRACE_ID], trace_id, 32) < 0 || append_hex(&c[S_SPAN_ID], span_id, 16) < 0 ||
          (parent_span ? append_hex(&c[S_PARENT_SPAN_ID], parent_span, 16) : append_null(&c[S_PARENT_SPAN_ID])) < 0 ||
          append_text(&c[S_NAME], f.name) < 0 || append_text(&c[S_KIND], kind_name) < 0 ||
          append_i64(&c[S_START], start) < 0 || append_i64(&c[S_END], end) < 0 ||
          append_f64(&c[S_DURATION], duration_ms) < 0 || append_text(&c[S_STATUS_CODE], status_name) < 0 ||
          append_text(&c[S_STATUS_MESSAGE], description) < 0 ||
          append_text(&c[S_SERVICE], PyTuple_GET_ITEM(resource_row, 0)) < 0 ||
          append_text(&c[S_RESOURCE_ATTRIBUTES], PyTuple_GET_ITEM(resource_row, 1)) < 0 ||
          append_text(&c[S_SCOPE_NAME], scope_name ? scope_name : Py_None) < 0 ||
          append_text(&c[S_SCOPE_VERSION], scope_version ? scope_version : Py_None) < 0 ||
          append_json(&c[S_ATTRIBUTES], attributes) < 0 || append_i32(&c[S_DROPPED_ATTRIBUTES], dropped[0]) < 0 ||
          append_i32(&c[S_DROPPED_EVENTS], dropped[1]) < 0 || append_i32(&c[S_DROPPED_LINKS], dropped[2]) < 0 ||
          append_str_of(&c[S_ROLE], r.role) < 0 || append_str_of(&c[S_EXECUTION_ID], r.execution_id) < 0 ||
          append_str_of(&c[S_WORKFLOW_ID], r.workflow_id) < 0 || append_str_of(&c[S_STEP_NAME], r.step_name) < 0 ||
          append_str_of(&c[S_STEP_TYPE], r.step_type) < 0 ||
          (r.step_sequence ? append_i64(&c[S_STEP_SEQUENCE], PyLong_AsLongLong(r.step_sequence))
                           : append_null(&c[S_STEP_SEQUENCE])) < 0 ||
          append_str_of(&c[S_PARENT_STEP_ID], r.parent_step_id) < 0 ||
          append_str_of(&c[S_WORKFLOW_STATUS], workflow_status(&r, failed)) < 0 ||
          append_str_of(&c[S_ERROR_MESSAGE], error_message) < 0 ||
          append_str_of(&c[S_TRIGGER_TYPE], r.trigger_type) < 0 ||
          append_str_of(&c[S_TRIGGERED_BY], r.triggered_by) < 0 ||
          append_str_of(&c[S_CONFIG_VERSION], r.config_version) < 0 ||
          (r.role ? append_bool(&c[S_CAPTURE_IO], r.capture_io) : append_null(&c[S_CAPTURE_IO])) < 0 ||
          append_str_of(&c[S_INPUT], input) < 0 || append_str_of(&c[S_OUTPUT], output) < 0;
    Py_DECREF(resource_row);
    if (!bad) {
        b->span_rows++;
        status = 0;
    }
done:
    fields_free(&f);
    recognised_free(&r);
    Py_XDECREF(attributes);
    Py_XDECREF(description);
    Py_XDECREF(scope_name);
    Py_XDECREF(scope_version);
    Py_XDECREF(input);
    Py_XDECREF(output);
    Py_XDECREF(error_message);
    return status;
}

/*
 * finished(spans: list, types: set, describe_resource) -> (spans, events, links, span_rows, event_rows,
 * link_rows): three "arrow_array" capsules and their lengths (convert.tables_of imports them). Raises
 * Unsupported (a span whose type is not in `types`, or not shaped like the SDK's) or any error a value
 * caused; the caller then converts the slice in Python.
 */
static PyObject *finished(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (nargs != 3 || !PyList_Check(args[0]) || !PyAnySet_Check(args[1]) || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "finished(spans: list, types: set, describe_resource)");
        return NULL;
    }
    /* A copy: helpers run Python code, which may change the caller's list. */
    PyObject *spans = PySequence_List(args[0]);
    if (spans == NULL) {
        return NULL;
    }
    Batch b;
    PyObject *result = NULL;
    if (batch_init(&b, (size_t)PyList_GET_SIZE(spans)) < 0) {
        goto done;
    }
    Py_INCREF(args[2]);
    b.describe_resource = args[2];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        int known = PySet_Contains(args[1], (PyObject *)Py_TYPE(span));
        if (known == 0) {
            PyErr_SetObject(Unsupported, (PyObject *)Py_TYPE(span));
        }
        if (known <= 0 || add_span(&b, span) < 0) {
            goto done;
        }
    }
    PyObject *span_batch = export_batch(b.spans, S_COUNT, b.span_rows);
    PyObject *event_batch = span_batch ? export_batch(b.events, E_COUNT, b.event_rows) : NULL;
    PyObject *link_batch = event_batch ? export_batch(b.links, L_COUNT, b.link_rows) : NULL;
    if (link_batch != NULL) {
        result = Py_BuildValue("(OOOLLL)", span_batch, event_batch, link_batch, (long long)b.span_rows,
                               (long long)b.event_rows, (long long)b.link_rows);
    }
    Py_XDECREF(span_batch);
    Py_XDECREF(event_batch);
    Py_XDECREF(link_batch);
done:
    batch_free(&b);
    Py_DECREF(spans);
    return result;
}

#ifndef _WIN32
/* ---- one table's record batches written into a file, column by column ----
 * The writer process's hand-over (storage/writerwire.py): the parts of a write cycle go into the cycle's
 * memory file straight from the columns built here, each column's parts concatenated, in one call that
 * holds the GIL only to find them. Through pyarrow (import, IPC stream, write) the writer let go of the
 * GIL dozens of times per cycle and waited up to a switch interval (5 ms) to get it back each time.
 */
#define PACK_ALIGN 64
#define PACK_IOV 512

typedef struct {
    int64_t offset, length;
} Extent;

typedef struct {
    int64_t null_count;
    int n_buffers;
    Extent buffers[3]; /* validity (length 0: none), then offsets and data, or data */
} PackedColumn;

typedef struct {
    int fd;
    int64_t position;
} PackFile;

static int pack_write(PackFile *f, struct iovec *iov, int count) {
    while (count > 0) {
        ssize_t written = writev(f->fd, iov, count);
        if (written < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        f->position += written;
        while (count > 0 && (size_t)written >= iov->iov_len) {
            written -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + written;
            iov->iov_len -= (size_t)written;
        }
    }
    return 0;
}

/* Writes the pieces as one buffer, padded to PACK_ALIGN; its extent in the file goes to `extent`. */
static int pack_buffer(PackFile *f, struct iovec *pieces, Py_ssize_t count, Extent *extent) {
    static const char zeros[PACK_ALIGN] = {0};
    extent->offset = f->position;
    for (Py_ssize_t first = 0; first < count; first += PACK_IOV) {
        int n = (int)(count - first < PACK_IOV ? count - first : PACK_IOV);
        if (pack_write(f, pieces + first, n) < 0) {
            return -1;
        }
    }
    extent->length = f->position - extent->offset;
    int64_t pad = (PACK_ALIGN - f->position % PACK_ALIGN) % PACK_ALIGN;
    struct iovec padding = {(void *)zeros, (size_t)pad};
    return pad ? pack_write(f, &padding, 1) : 0;
}

/* The parts' bits (validity, or boolean values), one after the other, in `out` (zeroed). */
static void pack_bits(const Column **parts, Py_ssize_t count, int values, uint8_t *out) {
    int64_t at = 0;
    for (Py_ssize_t p = 0; p < count; p++) {
        const uint8_t *bits = values ? parts[p]->data : parts[p]->validity;
        for (int64_t i = 0; i < parts[p]->length; i++, at++) {
            if (bits[i / 8] & (1u << (i % 8))) {
                out[at / 8] |= (uint8_t)(1u << (at % 8));
            }
        }
    }
}

/* One column of every part; 0, -1 on a write error (errno), 1 if it cannot be packed (too long). */
static int pack_column(PackFile *f, const Column **parts, Py_ssize_t count, PackedColumn *out) {
    int64_t rows = 0;
    out->null_count = 0;
    for (Py_ssize_t p = 0; p < count; p++) {
        rows += parts[p]->length;
        out->null_count += parts[p]->null_count;
    }
    ColumnKind kind = parts[0]->kind;
    size_t bitmap_size = (size_t)(rows + 7) / 8;
    struct iovec *pieces = calloc((size_t)count + 1, sizeof(struct iovec));
    uint8_t *bitmap = calloc(bitmap_size + 1, 1);
    int32_t *offsets = kind == COL_STR ? malloc(((size_t)rows + 1) * sizeof(int32_t)) : NULL;
    int status = -1;
    if (pieces == NULL || bitmap == NULL || (kind == COL_STR && offsets == NULL)) {
        errno = ENOMEM;
        goto done;
    }
    out->buffers[0] = (Extent){f->position, 0};
    if (out->null_count) {
        pack_bits(parts, count, 0, bitmap);
        pieces[0] = (struct iovec){bitmap, bitmap_size};
        if (pack_buffer(f, pieces, 1, &out->buffers[0]) < 0) {
            goto done;
        }
    }
    if (kind == COL_STR) {
        int64_t base = 0, at = 0;
        offsets[0] = 0;
        for (Py_ssize_t p = 0; p < count; p++) {
            const Column *c = parts[p];
            int64_t first = c->length ? c->offsets[0] : 0;
            int64_t used = c->length ? c->offsets[c->length] - first : 0;
            if (base + used > INT32_MAX) {
                status = 1; /* more than 32-bit offsets address: the caller sends the cycle otherwise */
                goto done;
            }
            for (int64_t i = 1; i <= c->length; i++) {
                offsets[++at] = (int32_t)(base + c->offsets[i] - first);
            }
            pieces[p] = (struct iovec){used ? c->data + first : NULL, (size_t)used};
            base += used;
        }
        struct iovec offsets_piece = {offsets, ((size_t)rows + 1) * sizeof(int32_t)};
        out->n_buffers = 3;
        if (pack_buffer(f, &offsets_piece, 1, &out->buffers[1]) < 0 ||
            pack_buffer(f, pieces, count, &out->buffers[2]) < 0) {
            goto done;
        }
    } else if (kind == COL_BOOL) {
        memset(bitmap, 0, bitmap_size + 1);
        pack_bits(parts, count, 1, bitmap);
        pieces[0] = (struct iovec){bitmap, bitmap_size};
        out->n_buffers = 2;
        if (pack_buffer(f, pieces, 1, &out->buffers[1]) < 0) {
            goto done;
        }
    } else {
        size_t width = kind == COL_I32 ? 4 : 8;
        for (Py_ssize_t p = 0; p < count; p++) {
            pieces[p] = (struct iovec){parts[p]->data, (size_t)parts[p]->length * width};
        }
        out->n_buffers = 2;
        if (pack_buffer(f, pieces, count, &out->buffers[1]) < 0) {
            goto done;
        }
    }
    status = 0;
done:
    free(pieces);
    free(bitmap);
    free(offsets);
    return status;
}

/* The columns of a record batch this module made, or NULL (someone else's, or already moved out). */
static int own_columns(PyObject *capsule, const Column **columns, Py_ssize_t n_columns) {
    if (!PyCapsule_IsValid(capsule, "arrow_array")) {
        return -1;
    }
    struct ArrowArray *array = (struct ArrowArray *)PyCapsule_GetPointer(capsule, "arrow_array");
    if (array->release != release_parent || array->n_children != n_columns) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_columns; i++) {
        struct ArrowArray *child = array->children[i];
        if (child->release != release_child) {
            return -1;
        }
        columns[i] = &((ChildData *)child->private_data)->column;
    }
    return 0;
}

/*
 * pack(arrays: list of "arrow_array" capsules of one table, columns: int, fd: int) ->
 * (rows, ((null_count, ((offset, length), ...)), ...)) | None
 *
 * Appends each column of the record batches, concatenated, to the file at fd (from its current position;
 * every buffer at a multiple of 64 bytes), and says where each column's buffers went. The capsules stay as
 * they are (read, not moved: the caller may import them later); the GIL is let go while the columns are
 * written, so the caller must keep them, and no other thread import them, until this returns. None: they
 * cannot be packed (not made by `finished`, already imported, or a string column past 2 GiB); the caller
 * then discards the file, which may hold the columns written before.
 */
static PyObject *pack(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(args[0]) || !PyLong_Check(args[1]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "pack(arrays: list, columns: int, fd: int)");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(args[0]);
    Py_ssize_t n_columns = PyLong_AsSsize_t(args[1]);
    long fd_value = PyLong_AsLong(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (fd_value < 0 || fd_value > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    int fd = (int)fd_value;
    if (count == 0 || n_columns <= 0 || n_columns > 256) {
        Py_RETURN_NONE;
    }
    const Column **by_part = calloc((size_t)(count * n_columns), sizeof(Column *));
    const Column **parts = calloc((size_t)count, sizeof(Column *));
    PackedColumn *packed = calloc((size_t)n_columns, sizeof(PackedColumn));
    PyObject *result = NULL;
    if (by_part == NULL || parts == NULL || packed == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t rows = 0;
    for (Py_ssize_t p = 0; p < count; p++) {
        if (own_columns(PyList_GET_ITEM(args[0], p), by_part + p * n_columns, n_columns) < 0) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        rows += by_part[p * n_columns]->length;
    }
    PackFile file = {fd, 0};
    int status = 0;
    Py_BEGIN_ALLOW_THREADS;
    off_t start = lseek(fd, 0, SEEK_CUR);
    if (start < 0) {
        status = -1;
    }
    file.position = (int64_t)start;
    for (Py_ssize_t c = 0; status == 0 && c < n_columns; c++) {
        for (Py_ssize_t p = 0; p < count; p++) {
            parts[p] = by_part[p * n_columns + c];
        }
        status = pack_column(&file, parts, count, &packed[c]);
    }
    Py_END_ALLOW_THREADS;
    if (status < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    if (status > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *columns = PyTuple_New(n_columns);
    for (Py_ssize_t c = 0; columns != NULL && c < n_columns; c++) {
        PyObject *extents = PyTuple_New(packed[c].n_buffers);
        for (int b = 0; extents != NULL && b < packed[c].n_buffers; b++) {
            PyObject *extent = Py_BuildValue("(LL)", (long long)packed[c].buffers[b].offset,
                                             (long long)packed[c].buffers[b].length);
            if (extent == NULL) {
                Py_CLEAR(extents);
                break;
            }
            PyTuple_SET_ITEM(extents, b, extent);
        }
        PyObject *column = extents ? Py_BuildValue("(LN)", (long long)packed[c].null_count, extents) : NULL;
        if (column == NULL) {
            Py_CLEAR(columns);
            break;
        }
        PyTuple_SET_ITEM(columns, c, column);
    }
    if (columns != NULL) {
        result = Py_BuildValue("(LN)", (long long)rows, columns);
    }
done:
    free(by_part);
    free(parts);
    free(packed);
    return result;
}
#endif

/*
 * convert.span_owners: for each finished span, (execution id, whether it is that execution's own span),
 * or None for a span of a class this module does not read (Python tells). The writer asks this of
 * every span it accepts, on the exporter's thread.
 */
static PyObject *owners(PyObject *module, PyObject *spans) {
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (!PyList_Check(spans)) {
        PyErr_SetString(PyExc_TypeError, "owners(spans: list)");
        return NULL;
    }
    PyObject *none = PyTuple_Pack(2, Py_None, Py_False);
    PyObject *result = none == NULL ? NULL : PyList_New(PyList_GET_SIZE(spans));
    for (Py_ssize_t i = 0; result != NULL && i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        PyObject *item = NULL, *holder = NULL, *attributes = NULL, *execution_id = NULL, *name = NULL;
        int error = 0, sdk = PySequence_Contains(config.sdk_span_types, (PyObject *)Py_TYPE(span));
        if (sdk <= 0) {
            item = sdk < 0 ? NULL : Py_NewRef(Py_None);
            goto next;
        }
        Py_INCREF(span); /* Python code may run below (a str() of a value) */
        if ((holder = PyObject_GetAttr(span, s_attributes)) == NULL ||
            (attributes = plain_attributes(holder)) == NULL) {
            goto span_done;
        }
        execution_id = pick(attributes, rules.execution_id_keys, &error);
        if (error || to_text(&execution_id) < 0) {
            goto span_done;
        }
        if (execution_id == NULL) {
            item = Py_NewRef(none);
            goto span_done;
        }
        if ((name = PyObject_GetAttr(span, s_name)) == NULL) {
            goto span_done;
        }
        int step = 0, execution = 0;
        if (PyUnicode_Check(name) && span_role(name, attributes, &role_keys, &step, &execution) < 0) {
            goto span_done;
        }
        item = PyTuple_Pack(2, execution_id, execution ? Py_True : Py_False);
    span_done:
        Py_XDECREF(name);
        Py_XDECREF(execution_id);
        Py_XDECREF(attributes);
        Py_XDECREF(holder);
        Py_DECREF(span);
    next:
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, item);
    }
    Py_XDECREF(none);
    return result;
}

/* One table's columns as ((name, arrow type), ...). */
static PyObject *column_names(const ColumnName *names, int count) {
    PyObject *result = PyTuple_New(count);
    for (int i = 0; result != NULL && i < count; i++) {
        PyObject *pair = Py_BuildValue("(ss)", names[i].name, names[i].arrow);
        if (pair == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyTuple_SET_ITEM(result, i, pair);
    }
    return result;
}

/*
 * columns() -> (spans, span_events, span_links): each table's columns as `finished` builds them, in
 * order, as ((name, arrow type), ...), for the check against ingest/columns.py.
 */
static PyObject *columns(PyObject *module, PyObject *unused) {
    PyObject *spans = column_names(SPAN_NAMES, S_COUNT);
    PyObject *events = spans ? column_names(EVENT_NAMES, E_COUNT) : NULL;
    PyObject *links = events ? column_names(LINK_NAMES, L_COUNT) : NULL;
    PyObject *result = links ? PyTuple_Pack(3, spans, events, links) : NULL;
    Py_XDECREF(spans);
    Py_XDECREF(events);
    Py_XDECREF(links);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "Set the SDK classes and helpers (convert.py) and the recognition rules (rules.py)."},
    {"finished", (PyCFunction)(void (*)(void))finished, METH_FASTCALL,
     "Finished SDK spans -> Arrow arrays (spans, events, links) as capsules."},
    {"columns", (PyCFunction)columns, METH_NOARGS, "The columns of the three tables, as built here."},
    {"owners", (PyCFunction)owners, METH_O, "Finished spans -> (execution id, ends it) or None each."},
    {"stream", (PyCFunction)(void (*)(void))stream, METH_FASTCALL,
     "Record batch capsules and a schema capsule -> one ArrowArrayStream capsule."},
#ifndef _WIN32
    {"pack", (PyCFunction)(void (*)(void))pack, METH_FASTCALL,
     "Record batch capsules of one table -> its columns appended to a file; where each buffer went."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "otel_workflow._native.spanrows",
    .m_doc = "SDK spans to Arrow batches in C (see otel_workflow.ingest.convert).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit_spanrows(void) {
    if (intern_names() < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Unsupported = PyErr_NewException("otel_workflow._native.spanrows.Unsupported", PyExc_TypeError, NULL);
    if (Unsupported == NULL || PyModule_AddObjectRef(module, "Unsupported", Unsupported) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
