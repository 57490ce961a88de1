// Uses the C++ standard library (strings, vectors, streams, algorithms), so the repaired
// wheel depends on libstdc++ symbol versions that the policy must allow.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

static PyObject *sorted_words(PyObject *, PyObject *args) {
    const char *text = nullptr;
    if (!PyArg_ParseTuple(args, "s", &text)) {
        return nullptr;
    }
    std::istringstream in{std::string(text)};
    std::vector<std::string> words;
    for (std::string word; in >> word;) {
        words.push_back(word);
    }
    std::sort(words.begin(), words.end());
    std::ostringstream out;
    for (size_t i = 0; i < words.size(); ++i) {
        out << (i ? " " : "") << words[i];
    }
    return PyUnicode_FromString(out.str().c_str());
}

static PyMethodDef methods[] = {
    {"sorted_words", sorted_words, METH_VARARGS, "Sort the words of a string."},
    {nullptr, nullptr, 0, nullptr},
};

static PyModuleDef_Slot slots[] = {
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpp", nullptr, 0, methods, slots};

PyMODINIT_FUNC PyInit__cpp(void) { return PyModuleDef_Init(&module); }
