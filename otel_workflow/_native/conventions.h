/*
 * The recognition rules of otel_workflow.model.conventions that both C modules (spanrows.c, spanstart.c)
 * apply, written once.
 */
#ifndef OTEL_WORKFLOW_CONVENTIONS_H
#define OTEL_WORKFLOW_CONVENTIONS_H

#include <Python.h>

/*
 * conventions._pick: the first of `keys` (a tuple) whose value in `attributes` (a dict) is not None and
 * not "". A new reference, or NULL: none found, or a lookup failed (then *error is set and a Python
 * exception is pending).
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

/* The names and keys `span_role` reads (borrowed from the module's configuration). */
typedef struct {
    PyObject *step_prefix;  /* a step span's name starts with it */
    PyObject *step_keys[3]; /* any of them makes a span a step */
    PyObject *execution_name;
    PyObject *run_id; /* makes a span that is not a step an execution */
} RoleKeys;

/* conventions.role_of: sets *step or *execution (or neither); -1 on error. */
static int span_role(PyObject *name, PyObject *attributes, const RoleKeys *keys, int *step, int *execution) {
    if ((*step = PyUnicode_Tailmatch(name, keys->step_prefix, 0, PY_SSIZE_T_MAX, -1)) < 0) {
        return -1;
    }
    for (int i = 0; !*step && i < 3; i++) {
        if ((*step = PyDict_Contains(attributes, keys->step_keys[i])) < 0) {
            return -1;
        }
    }
    *execution = 0;
    if (!*step) {
        *execution = PyUnicode_Compare(name, keys->execution_name) == 0;
        if (!*execution && (*execution = PyDict_Contains(attributes, keys->run_id)) < 0) {
            return -1;
        }
    }
    return 0;
}

#endif
