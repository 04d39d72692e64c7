/*
 * WorkflowSpanProcessor's on_start and on_end in C, for the SDK's own span classes.
 *
 * They run on the application thread for every span, so they are what the processor costs the
 * application: in Python about 3 us per plain span and 8 us per step, against a budget of a few us
 * in all (README "Performance"). `processor._PythonHooks` is the reference: this type makes the same
 * decisions (tests/test_tracer.py runs the processor tests on both), and hands a span it does not
 * read (another class, odd attribute storage) to it whole. Rare work (numbering a step the tracer
 * did not number, setting attributes, waking the writer for a live row) calls back into Python.
 *
 * The running-span map is shared with Python: span id (int) -> (execution id | None, workflow id |
 * None, is_step: bool). No key or span name is spelled here: they come from rules.RECOGNITION when a
 * Hooks is made. The live-row gate (ingest/live.py `LiveRowGate`) is reached only through the
 * interface it documents for this module: `open`, `limit`, `refused`, `spans`, `wake()`, `dropped()`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "conventions.h"

static PyObject *s_name, *s_attributes, *s_parent, *s_context, *s_inner_dict, *s_public_context,
    *s_set_attributes, *s_hex_format, *s_open, *s_spans, *s_limit, *s_refused, *s_dropped, *s_wake;

typedef struct {
    PyObject_HEAD
    PyObject *live;          /* dict, see above */
    Py_ssize_t max_live;     /* bound of `live`: the oldest entry goes first */
    Py_ssize_t evicted;      /* execution entries forgotten by that bound */
    PyObject *span_types;    /* tuple: the SDK's span classes (Span, and _Span that its tracer makes) */
    PyObject *readable_type; /* opentelemetry.sdk.trace.ReadableSpan: what on_end gets from a Span */
    PyObject *bounded_type;  /* opentelemetry.attributes.BoundedAttributes: its `_dict` is read */
    PyObject *span_key;      /* the context key of the current span (trace.propagation._SPAN_KEY) */
    PyObject *current_context; /* the ContextVar of the current Context, or None (another runtime context) */
    /* The rules (rules.RECOGNITION): */
    PyObject *markers;       /* frozenset: keys that can give a span a role or an execution id */
    PyObject *marker_list;   /* the same keys, as a tuple to go through */
    PyObject *execution_id_keys; /* tuple, in order of precedence */
    PyObject *workflow_id_key, *execution_id_key, *step_parent_key, *step_sequence_key; /* stamped */
    RoleKeys roles;
    PyObject *fallback;       /* processor._PythonHooks sharing `live`: spans this type does not read */
    PyObject *number_step;    /* execution id -> the next step number */
    PyObject *forget;         /* execution id -> None: its step counter goes */
    PyObject *live_rows;      /* live.LiveRowGate where started spans wait for live rows; or None */
    PyObject *recognised_parent; /* parent_context -> entry or None, where this type cannot tell */
    PyObject *failed;         /* (where, exception) -> None: logs once */
} Hooks;

/* ---- helpers (new references unless said) ---- */

/* The plain dict of a span's attributes (borrowed from `holder`'s field, which the caller owns), or
 * NULL without an error when they are kept some other way. */
static PyObject *attribute_dict(Hooks *h, PyObject *holder) {
    if (PyDict_CheckExact(holder)) {
        Py_INCREF(holder);
        return holder;
    }
    if ((PyObject *)Py_TYPE(holder) != h->bounded_type) {
        return NULL;
    }
    PyObject *inner = PyObject_GetAttr(holder, s_inner_dict);
    if (inner != NULL && !PyDict_CheckExact(inner)) {
        Py_CLEAR(inner);
    }
    return inner;
}

/* Whether `object` is exactly of one of the SDK's span classes (a subclass may keep its fields
 * elsewhere: the fallback reads it through the public interface). */
static int sdk_span(Hooks *h, PyObject *object) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(h->span_types); i++) {
        if ((PyObject *)Py_TYPE(object) == PyTuple_GET_ITEM(h->span_types, i)) {
            return 1;
        }
    }
    return 0;
}

static int has_marker(Hooks *h, PyObject *attributes) {
    /* Over the smaller side: most spans have a few attributes, the markers are a handful. */
    if (PyDict_GET_SIZE(attributes) < PySet_GET_SIZE(h->markers)) {
        Py_ssize_t at = 0;
        PyObject *key, *value;
        while (PyDict_Next(attributes, &at, &key, &value)) {
            int found = PySet_Contains(h->markers, key);
            if (found != 0) {
                return found;
            }
        }
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(h->marker_list); i++) {
        int found = PyDict_Contains(attributes, PyTuple_GET_ITEM(h->marker_list, i));
        if (found != 0) {
            return found;
        }
    }
    return 0;
}

static int starts_with(PyObject *text, PyObject *prefix) {
    return PyUnicode_Tailmatch(text, prefix, 0, PY_SSIZE_T_MAX, -1) == 1;
}

/* conventions.execution_id_of: the first recognised key with a value, as str; None without one. */
static PyObject *execution_id_of(Hooks *h, PyObject *attributes) {
    int error = 0;
    PyObject *value = pick(attributes, h->execution_id_keys, &error);
    if (value == NULL) {
        return error ? NULL : Py_NewRef(Py_None);
    }
    Py_SETREF(value, PyObject_Str(value));
    return value;
}

/* The (trace id, span id, is_remote) tuple of a SpanContext: its span id and remoteness, borrowed. */
static int context_parts(PyObject *context, PyObject **span_id, int *remote) {
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 3) {
        PyErr_SetString(PyExc_TypeError, "span context is not a SpanContext");
        return -1;
    }
    *span_id = PyTuple_GET_ITEM(context, 1);
    if (remote != NULL && (*remote = PyObject_IsTrue(PyTuple_GET_ITEM(context, 2))) < 0) {
        return -1;
    }
    return 0;
}

static PyObject *entry(PyObject *execution_id, PyObject *workflow_id, int step) {
    return PyTuple_Pack(3, execution_id, workflow_id, step ? Py_True : Py_False);
}

/*
 * The entry of the parent span in `parent_context`, recognised from its attributes now (it is not a
 * running span of ours: an HTTP span inside a step, a step that already ended); None if it is not a
 * recording span. Python (`recognised_parent`) where the context is not a plain Context.
 */
static PyObject *recognised_parent(Hooks *h, PyObject *parent_context) {
    PyObject *context_dict = parent_context, *current = NULL;
    if (parent_context == Py_None && h->current_context != Py_None) {
        /* No context given: the current one (what the SDK's start_span does then). */
        if (PyContextVar_Get(h->current_context, NULL, &current) < 0) {
            return NULL;
        }
        context_dict = current;
    }
    if (context_dict == NULL || !PyDict_Check(context_dict)) {
        Py_XDECREF(current);
        return PyObject_CallOneArg(h->recognised_parent, parent_context);
    }
    PyObject *parent = PyDict_GetItemWithError(context_dict, h->span_key);
    Py_XINCREF(parent); /* Python code may run below (a str() of a value) */
    Py_XDECREF(current);
    if (parent == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *result = NULL, *holder = NULL, *attributes = NULL, *name = NULL, *context = NULL,
             *execution_id = NULL;
    if (!sdk_span(h, parent)) {
        result = PyObject_CallOneArg(h->recognised_parent, parent_context);
        goto done;
    }
    if ((context = PyObject_GetAttr(parent, s_context)) == NULL) {
        goto done;
    }
    if (context == Py_None) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if ((holder = PyObject_GetAttr(parent, s_attributes)) == NULL ||
        (name = PyObject_GetAttr(parent, s_name)) == NULL) {
        goto done;
    }
    if ((attributes = attribute_dict(h, holder)) == NULL || !PyUnicode_Check(name)) {
        if (!PyErr_Occurred()) {
            result = PyObject_CallOneArg(h->recognised_parent, parent_context);
        }
        goto done;
    }
    if ((execution_id = execution_id_of(h, attributes)) == NULL) {
        goto done;
    }
    PyObject *workflow_id = PyDict_GetItemWithError(attributes, h->workflow_id_key);
    if (workflow_id == NULL && PyErr_Occurred()) {
        goto done;
    }
    int step, execution;
    if (span_role(name, attributes, &h->roles, &step, &execution) == 0) {
        result = entry(execution_id, workflow_id ? workflow_id : Py_None, step);
    }
done:
    Py_XDECREF(execution_id);
    Py_XDECREF(attributes);
    Py_XDECREF(name);
    Py_XDECREF(holder);
    Py_XDECREF(context);
    Py_DECREF(parent);
    return result;
}

static int set_added(PyObject **added, PyObject *key, PyObject *value) {
    if (*added == NULL && (*added = PyDict_New()) == NULL) {
        return -1;
    }
    return PyDict_SetItem(*added, key, value);
}

/* Room for one more running span: the oldest entry goes when `max_live` are held. */
static int make_room(Hooks *h) {
    if (PyDict_GET_SIZE(h->live) < h->max_live) {
        return 0;
    }
    Py_ssize_t at = 0;
    PyObject *key, *value;
    if (!PyDict_Next(h->live, &at, &key, &value)) {
        return 0;
    }
    if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 3 && PyTuple_GET_ITEM(value, 2) == Py_False) {
        h->evicted++;
    }
    return PyDict_DelItem(h->live, key);
}

/* live.LiveRowGate.submit, through the gate's interface for this module (see there): no Python code
 * runs unless the span is the first to wait (wake the writer) or is turned away (count it). */
static int queue_live_row(Hooks *h, PyObject *span, PyObject *execution_id) {
    PyObject *gate = h->live_rows, *spans = NULL, *refused = NULL, *limit = NULL, *open = NULL;
    int result = -1, accepted = 0;
    if ((open = PyObject_GetAttr(gate, s_open)) == NULL || (spans = PyObject_GetAttr(gate, s_spans)) == NULL ||
        (limit = PyObject_GetAttr(gate, s_limit)) == NULL ||
        (refused = PyObject_GetAttr(gate, s_refused)) == NULL) {
        goto done;
    }
    if (!PyList_Check(spans) || !PyDict_Check(refused)) {
        PyErr_SetString(PyExc_TypeError, "a live-row gate holds a list of spans and a dict of refused ids");
        goto done;
    }
    Py_ssize_t room = PyLong_AsSsize_t(limit);
    if (room == -1 && PyErr_Occurred()) {
        goto done;
    }
    int is_open = PyObject_IsTrue(open);
    int is_refused = execution_id == Py_None ? 0 : PyDict_Contains(refused, execution_id);
    if (is_open < 0 || is_refused < 0) {
        goto done;
    }
    if (is_open && !is_refused && PyList_GET_SIZE(spans) < room) {
        /* Weakly: a span kept until the writer's next cycle would outlive its export (see LiveRowGate). */
        PyObject *ref = PyWeakref_NewRef(span, NULL);
        if (ref == NULL) {
            goto done;
        }
        int appended = PyList_Append(spans, ref);
        Py_DECREF(ref);
        if (appended < 0) {
            goto done;
        }
        accepted = 1;
    }
    PyObject *called = NULL;
    if (!accepted) {
        called = PyObject_CallMethodNoArgs(gate, s_dropped);
    } else if (PyList_GET_SIZE(spans) == 1) {
        called = PyObject_CallMethodNoArgs(gate, s_wake);
    } else {
        result = 0;
        goto done;
    }
    result = called == NULL ? -1 : 0;
    Py_XDECREF(called);
done:
    Py_XDECREF(open);
    Py_XDECREF(limit);
    Py_XDECREF(refused);
    Py_XDECREF(spans);
    return result;
}

/* Returns 1 when done, 0 when the span is not one this type reads (the fallback takes it), -1 on error. */
static int start(Hooks *h, PyObject *span, PyObject *parent_context) {
    if (!sdk_span(h, span)) {
        return 0;
    }
    int done = -1;
    PyObject *holder = NULL, *attributes = NULL, *name = NULL, *parent = NULL, *execution_id = NULL,
             *workflow_id = NULL, *found = NULL, *added = NULL, *context = NULL;
    if ((holder = PyObject_GetAttr(span, s_attributes)) == NULL ||
        (name = PyObject_GetAttr(span, s_name)) == NULL || (parent = PyObject_GetAttr(span, s_parent)) == NULL) {
        goto out;
    }
    if ((attributes = attribute_dict(h, holder)) == NULL || !PyUnicode_Check(name)) {
        done = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    PyObject *parent_span_id = NULL;
    int local_parent = 0;
    if (parent != Py_None) {
        int remote;
        if (context_parts(parent, &parent_span_id, &remote) < 0) {
            goto out;
        }
        local_parent = !remote;
    }
    int step_name = starts_with(name, h->roles.step_prefix);
    int execution_name = PyUnicode_Compare(name, h->roles.execution_name) == 0;
    int marked = has_marker(h, attributes);
    if (marked < 0) {
        goto out;
    }
    /* Without a marker or a workflow name the span has no role or execution id of its own. */
    int own = marked || step_name || execution_name;
    if (!own && !local_parent) {
        done = 1; /* plainly not a workflow span: most spans end here */
        goto out;
    }
    int step = 0, execution = 0;
    if (own && span_role(name, attributes, &h->roles, &step, &execution) < 0) {
        goto out;
    }
    if ((execution_id = marked ? execution_id_of(h, attributes) : Py_NewRef(Py_None)) == NULL) {
        goto out;
    }
    workflow_id = PyDict_GetItemWithError(attributes, h->workflow_id_key);
    if (workflow_id == NULL) {
        if (PyErr_Occurred()) {
            goto out;
        }
        workflow_id = Py_None;
    }
    Py_INCREF(workflow_id);
    int has_parent_id = step ? PyDict_Contains(attributes, h->step_parent_key) : 1;
    if (has_parent_id < 0) {
        goto out;
    }
    if (local_parent && (execution_id == Py_None || !has_parent_id)) {
        found = PyDict_GetItemWithError(h->live, parent_span_id);
        if (found == NULL && PyErr_Occurred()) {
            goto out;
        }
        if (found != NULL && PyTuple_Check(found) && PyTuple_GET_SIZE(found) == 3 &&
            PyTuple_GET_ITEM(found, 0) != Py_None) {
            Py_INCREF(found);
        } else if ((found = recognised_parent(h, parent_context)) == NULL) {
            /* Not one of ours that is running, or one that got its execution id after it started. */
            goto out;
        }
        if (found != Py_None) {
            if (!PyTuple_Check(found) || PyTuple_GET_SIZE(found) != 3) {
                PyErr_SetString(PyExc_TypeError, "a running-span entry must be a triple");
                goto out;
            }
            PyObject *found_execution = PyTuple_GET_ITEM(found, 0);
            PyObject *found_workflow = PyTuple_GET_ITEM(found, 1);
            if (execution_id == Py_None && found_execution != Py_None) {
                Py_SETREF(execution_id, Py_NewRef(found_execution));
                if (set_added(&added, h->execution_id_key, execution_id) < 0) {
                    goto out;
                }
                if (found_workflow != Py_None && workflow_id == Py_None) {
                    Py_SETREF(workflow_id, Py_NewRef(found_workflow));
                    if (set_added(&added, h->workflow_id_key, workflow_id) < 0) {
                        goto out;
                    }
                }
            }
            if (step && PyTuple_GET_ITEM(found, 2) == Py_True && !has_parent_id) {
                PyObject *hex = PyObject_Format(parent_span_id, s_hex_format);
                if (hex == NULL || set_added(&added, h->step_parent_key, hex) < 0) {
                    Py_XDECREF(hex);
                    goto out;
                }
                Py_DECREF(hex);
            }
        }
    }
    if (step && execution_id != Py_None) {
        int numbered = PyDict_Contains(attributes, h->step_sequence_key);
        if (numbered < 0) {
            goto out;
        }
        if (!numbered) {
            /* A step the tracer did not number (it has its number in its start attributes). */
            PyObject *number = PyObject_CallOneArg(h->number_step, execution_id);
            if (number == NULL || set_added(&added, h->step_sequence_key, number) < 0) {
                Py_XDECREF(number);
                goto out;
            }
            Py_DECREF(number);
        }
    }
    if (added != NULL) {
        PyObject *ok = PyObject_CallMethodOneArg(span, s_set_attributes, added);
        if (ok == NULL) {
            goto out;
        }
        Py_DECREF(ok);
    }
    if (!step && !execution) {
        done = 1;
        goto out;
    }
    if ((context = PyObject_GetAttr(span, s_context)) == NULL) {
        goto out;
    }
    if (context != Py_None) {
        PyObject *span_id, *running;
        if (context_parts(context, &span_id, NULL) < 0 || make_room(h) < 0 ||
            (running = entry(execution_id, workflow_id, step)) == NULL) {
            goto out;
        }
        int stored = PyDict_SetItem(h->live, span_id, running);
        Py_DECREF(running);
        if (stored < 0) {
            goto out;
        }
    }
    /* The live row is built by the writer, and only if the span is still running by then. */
    if (h->live_rows != Py_None && queue_live_row(h, span, execution_id) < 0) {
        goto out;
    }
    done = 1;
out:
    Py_XDECREF(context);
    Py_XDECREF(added);
    Py_XDECREF(found);
    Py_XDECREF(workflow_id);
    Py_XDECREF(execution_id);
    Py_XDECREF(parent);
    Py_XDECREF(attributes);
    Py_XDECREF(name);
    Py_XDECREF(holder);
    return done;
}

/* A failure of ours must not reach the application: reported (once, by the Python side), swallowed. */
static PyObject *report(Hooks *h, const char *where) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    PyObject *ok = PyObject_CallFunction(h->failed, "sO", where, value ? value : Py_None);
    if (ok == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(ok);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    Py_RETURN_NONE;
}

static PyObject *on_start(Hooks *h, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    static const char *usage = "on_start(span, parent_context=None)";
    Py_ssize_t given = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    if (given < 1 || given > 2 || nargs < 1 ||
        (kwnames && PyTuple_GET_SIZE(kwnames) == 1 &&
         PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "parent_context") != 0)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    PyObject *span = args[0];
    PyObject *parent_context = given == 2 ? args[1] : Py_None;
    int done = start(h, span, parent_context);
    if (done < 0) {
        return report(h, "start");
    }
    if (done == 0) {
        PyObject *ok = PyObject_CallMethod(h->fallback, "on_start", "OO", span, parent_context);
        if (ok == NULL) {
            return report(h, "start");
        }
        Py_DECREF(ok);
    }
    Py_RETURN_NONE;
}

static PyObject *on_end(Hooks *h, PyObject *span) {
    if (PyDict_GET_SIZE(h->live) == 0) {
        Py_RETURN_NONE; /* nothing running: a plain span's end costs nothing more */
    }
    PyTypeObject *type = Py_TYPE(span);
    int sdk = (PyObject *)type == h->readable_type || sdk_span(h, span);
    PyObject *context = PyObject_GetAttr(span, sdk ? s_context : s_public_context);
    if (context == NULL) {
        return report(h, "end");
    }
    PyObject *span_id, *ended = NULL;
    if (context != Py_None) {
        if (context_parts(context, &span_id, NULL) < 0) {
            Py_DECREF(context);
            return report(h, "end");
        }
        ended = PyDict_GetItemWithError(h->live, span_id);
        Py_XINCREF(ended);
        if (ended != NULL && PyDict_DelItem(h->live, span_id) < 0) {
            /* Another thread ended the same span id first: nothing left to do. */
            PyErr_Clear();
        }
    }
    Py_DECREF(context);
    if (ended == NULL) {
        if (PyErr_Occurred()) {
            return report(h, "end");
        }
        Py_RETURN_NONE;
    }
    if (PyTuple_Check(ended) && PyTuple_GET_SIZE(ended) == 3 && PyTuple_GET_ITEM(ended, 2) == Py_False &&
        PyTuple_GET_ITEM(ended, 0) != Py_None) {
        PyObject *ok = PyObject_CallOneArg(h->forget, PyTuple_GET_ITEM(ended, 0));
        Py_DECREF(ended);
        if (ok == NULL) {
            return report(h, "end");
        }
        Py_DECREF(ok);
        Py_RETURN_NONE;
    }
    Py_DECREF(ended);
    Py_RETURN_NONE;
}

/* ---- the type ---- */

#define OBJECT_FIELDS(X)                                                                          \
    X(live) X(span_types) X(readable_type) X(bounded_type) X(span_key) X(current_context) X(markers)  \
    X(marker_list) X(execution_id_keys) X(workflow_id_key) X(execution_id_key) X(step_parent_key)   \
    X(step_sequence_key) X(fallback) X(number_step) X(forget) X(live_rows) X(recognised_parent)     \
    X(failed)

static int traverse(Hooks *h, visitproc visit, void *arg) {
#define VISIT(field) Py_VISIT(h->field);
#define VISIT_ROLE(field) Py_VISIT(h->roles.field);
    OBJECT_FIELDS(VISIT)
    ROLE_KEYS_FIELDS(VISIT_ROLE)
#undef VISIT_ROLE
#undef VISIT
    return 0;
}

static int clear(Hooks *h) {
#define CLEAR(field) Py_CLEAR(h->field);
#define CLEAR_ROLE(field) Py_CLEAR(h->roles.field);
    OBJECT_FIELDS(CLEAR)
    ROLE_KEYS_FIELDS(CLEAR_ROLE)
#undef CLEAR_ROLE
#undef CLEAR
    return 0;
}

static void dealloc(Hooks *h) {
    PyObject_GC_UnTrack(h);
    clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static int init(Hooks *h, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"live",       "max_live",       "span_types",        "readable_type",
                            "bounded_type", "span_key",     "current_context",   "rules",
                            "fallback",   "number_step",    "forget",            "live_rows",
                            "recognised_parent", "on_failure", NULL};
    PyObject *live, *span_types, *readable_type, *bounded_type, *span_key, *current_context, *rules, *fallback,
        *number_step, *forget, *live_rows, *recognised, *failed;
    Py_ssize_t max_live;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nO!OOOOOOOOOOO", names, &PyDict_Type, &live, &max_live,
                                     &PyTuple_Type, &span_types, &readable_type, &bounded_type, &span_key,
                                     &current_context, &rules, &fallback, &number_step, &forget,
                                     &live_rows, &recognised, &failed)) {
        return -1;
    }
    if (current_context != Py_None && !PyContextVar_CheckExact(current_context)) {
        PyErr_SetString(PyExc_TypeError, "current_context must be a ContextVar or None");
        return -1;
    }
    if (max_live < 1) {
        PyErr_SetString(PyExc_ValueError, "max_live must be at least 1");
        return -1;
    }
    clear(h);
    h->max_live = max_live;
    h->evicted = 0;
    PyObject **fields[] = {&h->live,     &h->span_types, &h->readable_type, &h->bounded_type,
                           &h->span_key, &h->current_context, &h->fallback, &h->number_step,
                           &h->forget,   &h->live_rows, &h->recognised_parent, &h->failed};
    PyObject *values[] = {live,     span_types,  readable_type, bounded_type, span_key, current_context,
                          fallback, number_step, forget,        live_rows, recognised, failed};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        *fields[i] = Py_NewRef(values[i]);
    }
    const RuleEntry entries[] = {
        {"markers", RULE_SET, &h->markers},
        {"execution_id_keys", RULE_KEYS, &h->execution_id_keys},
        {"workflow_id_key", RULE_TEXT, &h->workflow_id_key},
        {"execution_id_key", RULE_TEXT, &h->execution_id_key},
        {"step_parent_key", RULE_TEXT, &h->step_parent_key},
        {"step_sequence_key", RULE_TEXT, &h->step_sequence_key},
    };
    if (rules_read(rules, entries, sizeof(entries) / sizeof(entries[0])) < 0 ||
        role_keys_read(rules, &h->roles) < 0 || (h->marker_list = PySequence_Tuple(h->markers)) == NULL) {
        return -1;
    }
    if (live_rows != Py_None) {
        /* The gate's interface for this module (live.LiveRowGate): checked once, here. */
        PyObject *interface[] = {s_open, s_spans, s_limit, s_refused, s_dropped, s_wake};
        for (size_t i = 0; i < sizeof(interface) / sizeof(interface[0]); i++) {
            PyObject *member = PyObject_GetAttr(live_rows, interface[i]);
            if (member == NULL) {
                if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                    PyErr_Clear();
                    PyErr_Format(PyExc_TypeError, "live_rows has no %U (see live.LiveRowGate)", interface[i]);
                }
                return -1;
            }
            Py_DECREF(member);
        }
    }
    return 0;
}

static PyMethodDef hook_methods[] = {
    {"on_start", (PyCFunction)(void (*)(void))on_start, METH_FASTCALL | METH_KEYWORDS,
     "SpanProcessor.on_start(span, parent_context=None); never raises."},
    {"on_end", (PyCFunction)on_end, METH_O, "SpanProcessor.on_end(span); never raises."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef hook_members[] = {
    {"evicted", T_PYSSIZET, offsetof(Hooks, evicted), READONLY,
     "Execution entries forgotten to keep `live` within `max_live`."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HooksType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "otel_workflow._native.spanstart.Hooks",
    .tp_doc = "WorkflowSpanProcessor's on_start and on_end for SDK spans (see processor._PythonHooks).",
    .tp_basicsize = sizeof(Hooks),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)init,
    .tp_dealloc = (destructor)dealloc,
    .tp_traverse = (traverseproc)traverse,
    .tp_clear = (inquiry)clear,
    .tp_methods = hook_methods,
    .tp_members = hook_members,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "otel_workflow._native.spanstart",
    .m_doc = "WorkflowSpanProcessor's per-span hooks in C (see otel_workflow.sdk.processor).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit_spanstart(void) {
#define INTERN(var, text)                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL) {                                        \
        return NULL;                                                                               \
    }
    INTERN(s_name, "_name");
    INTERN(s_attributes, "_attributes");
    INTERN(s_parent, "_parent");
    INTERN(s_context, "_context");
    INTERN(s_inner_dict, "_dict");
    INTERN(s_public_context, "context");
    INTERN(s_set_attributes, "set_attributes");
    INTERN(s_hex_format, "016x");
    INTERN(s_open, "open");
    INTERN(s_spans, "spans");
    INTERN(s_limit, "limit");
    INTERN(s_refused, "refused");
    INTERN(s_dropped, "dropped");
    INTERN(s_wake, "wake");
#undef INTERN
    if (PyType_Ready(&HooksType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Hooks", (PyObject *)&HooksType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
