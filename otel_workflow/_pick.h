/*
 * conventions._pick for the C modules (_spanrows.c, _spanstart.c): the first of `keys` (a tuple) whose
 * value in `attributes` (a dict) is not None and not "". A new reference, or NULL: none found, or a
 * lookup failed (then *error is set and a Python exception is pending).
 */
#ifndef OTEL_WORKFLOW_PICK_H
#define OTEL_WORKFLOW_PICK_H

#include <Python.h>

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

#endif
