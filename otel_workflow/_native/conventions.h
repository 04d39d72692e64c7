/*
 * The recognition rules of otel_workflow.model.conventions that both C modules (spanrows.c, spanstart.c)
 * apply, written once. No name, key or status is spelled here or in the modules: each comes from the
 * mapping otel_workflow/_native/rules.py `RECOGNITION` (the constants of conventions.py), read once at
 * configure time by `rules_read`, which checks every entry's type.
 */
#ifndef OTEL_WORKFLOW_CONVENTIONS_H
#define OTEL_WORKFLOW_CONVENTIONS_H

#include <Python.h>

/* ---- reading the rules ---- */

typedef enum {
    RULE_TEXT, /* a str */
    RULE_KEYS, /* a tuple of str, in order of precedence */
    RULE_SET,  /* a frozenset of str */
} RuleKind;

/* One entry of the rules mapping and where it goes (a new reference, owned by the slot's holder). */
typedef struct {
    const char *name;
    RuleKind kind;
    PyObject **slot;
} RuleEntry;

/* rules[name], checked to be of `kind`: a new reference, or NULL with an exception set. */
static PyObject *rule_entry(PyObject *rules, const char *name, RuleKind kind) {
    PyObject *value = PyMapping_GetItemString(rules, name);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_KeyError, "the recognition rules have no %s", name);
        }
        return NULL;
    }
    int ok = kind == RULE_TEXT ? PyUnicode_CheckExact(value)
             : kind == RULE_KEYS ? PyTuple_CheckExact(value)
                                 : PyFrozenSet_CheckExact(value);
    if (ok && kind == RULE_KEYS) {
        for (Py_ssize_t i = 0; ok && i < PyTuple_GET_SIZE(value); i++) {
            ok = PyUnicode_CheckExact(PyTuple_GET_ITEM(value, i));
        }
    } else if (ok && kind == RULE_SET) {
        PyObject *items = PyObject_GetIter(value), *item;
        if (items == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        while (ok && (item = PyIter_Next(items)) != NULL) {
            ok = PyUnicode_CheckExact(item);
            Py_DECREF(item);
        }
        Py_DECREF(items);
        if (PyErr_Occurred()) {
            Py_DECREF(value);
            return NULL;
        }
    }
    if (!ok) {
        Py_DECREF(value);
        PyErr_Format(PyExc_TypeError, "recognition rule %s must be %s", name,
                     kind == RULE_TEXT ? "a str" : kind == RULE_KEYS ? "a tuple of str" : "a frozenset of str");
        return NULL;
    }
    return value;
}

/*
 * Every entry read from `rules` into its slot (what a slot held before is released); -1 with an
 * exception set, and no slot changed, if one is missing or of another type.
 */
static int rules_read(PyObject *rules, const RuleEntry *entries, size_t count) {
    PyObject **read = PyMem_Calloc(count ? count : 1, sizeof(PyObject *));
    if (read == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t i = 0;
    for (; i < count; i++) {
        if ((read[i] = rule_entry(rules, entries[i].name, entries[i].kind)) == NULL) {
            break;
        }
    }
    int status = i == count ? 0 : -1;
    for (size_t j = 0; j < i; j++) {
        if (status == 0) {
            Py_XSETREF(*entries[j].slot, read[j]);
        } else {
            Py_DECREF(read[j]);
        }
    }
    PyMem_Free(read);
    return status;
}

/* ---- conventions._pick ---- */

/*
 * The first of `keys` (a tuple) whose value in `attributes` (a dict) is not None and not "". A new
 * reference, or NULL: none found, or a lookup failed (then *error is set and a Python exception is
 * pending).
 */
static PyObject *pick(PyObject *attributes, PyObject *keys, int *error) {
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = PyDict_GetItemWithError(attributes, PyTuple_GET_ITEM(keys, i));
        if (value == NULL) {
            if (PyErr_Occurred()) {
                *error = 1;
                return NULL;
            }
            continue;
        }
        if (value == Py_None || (PyUnicode_Check(value) && PyUnicode_GET_LENGTH(value) == 0)) {
            continue;
        }
        Py_INCREF(value);
        return value;
    }
    return NULL;
}

/* ---- conventions.role_of ---- */

/* The names and keys `span_role` reads (owned by whoever holds the struct: see ROLE_KEYS_FIELDS). */
typedef struct {
    PyObject *step_prefix;    /* str: a step span's name starts with it */
    PyObject *step_keys;      /* tuple of str: any of them makes a span a step */
    PyObject *execution_name; /* str: the name of an execution span */
    PyObject *execution_keys; /* tuple of str: any of them makes a span that is not a step an execution */
} RoleKeys;

/* Each field of RoleKeys, for a holder's GC traverse and clear. */
#define ROLE_KEYS_FIELDS(X) X(step_prefix) X(step_keys) X(execution_name) X(execution_keys)

/* `keys` read from `rules` (what it held before is released); -1 on error, `keys` unchanged. */
static int role_keys_read(PyObject *rules, RoleKeys *keys) {
    const RuleEntry entries[] = {
        {"step_prefix", RULE_TEXT, &keys->step_prefix},
        {"step_keys", RULE_KEYS, &keys->step_keys},
        {"execution_name", RULE_TEXT, &keys->execution_name},
        {"execution_keys", RULE_KEYS, &keys->execution_keys},
    };
    return rules_read(rules, entries, sizeof(entries) / sizeof(entries[0]));
}

/* Whether `attributes` (a dict) has any of `keys` (a tuple); -1 on error. */
static int has_any(PyObject *attributes, PyObject *keys) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        int found = PyDict_Contains(attributes, PyTuple_GET_ITEM(keys, i));
        if (found != 0) {
            return found;
        }
    }
    return 0;
}

/* conventions.role_of: sets *step or *execution (or neither); -1 on error. */
static int span_role(PyObject *name, PyObject *attributes, const RoleKeys *keys, int *step, int *execution) {
    if ((*step = PyUnicode_Tailmatch(name, keys->step_prefix, 0, PY_SSIZE_T_MAX, -1)) < 0) {
        return -1;
    }
    if (!*step && (*step = has_any(attributes, keys->step_keys)) < 0) {
        return -1;
    }
    *execution = 0;
    if (!*step) {
        *execution = PyUnicode_Compare(name, keys->execution_name) == 0; /* both str: cannot fail */
        if (!*execution && (*execution = has_any(attributes, keys->execution_keys)) < 0) {
            return -1;
        }
    }
    return 0;
}

#endif
