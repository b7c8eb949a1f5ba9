// ram_edge_tag: tag images from C++ through an embedded Python interpreter and ram-edge's Tagger.
//
//   ram_edge_tag [--model DIR] [--runtime NAME] [--bgr] [--threads N] IMAGE...
//
// The pixels are decoded here (stb_image) into memory this program owns and handed to Python
// without a copy, through the buffer protocol (a memoryview over the C++ buffer). The model is
// loaded once. Output: one `IMAGE: tag score, tag score, ...` line per image, as `ram-edge tag`
// prints; errors on stderr; exit code 1 if any image failed, 2 if the model could not be loaded.
//
// Python: RAM_EDGE_PYTHON (e.g. a venv's bin/python) if set, else the interpreter this program was
// built against. With --threads N, N C++ threads tag concurrently: each takes the GIL only to call
// Python, and the runtimes release it while they compute, so the threads' work overlaps.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifndef RAM_EDGE_DEFAULT_PYTHON
#define RAM_EDGE_DEFAULT_PYTHON "python3"
#endif

namespace {

struct Options {
    std::string model;
    std::string runtime = "auto";
    bool bgr = false;
    int threads = 1;
    std::vector<std::string> images;
};

struct Outcome {
    std::string line;   // stdout line on success
    std::string error;  // stderr message on failure
};

// Owns a reference; releases it on scope exit (no Python object leaks on any path).
class Ref {
  public:
    explicit Ref(PyObject* obj = nullptr) : obj_(obj) {}
    ~Ref() { Py_XDECREF(obj_); }
    Ref(const Ref&) = delete;
    Ref& operator=(const Ref&) = delete;
    PyObject* get() const { return obj_; }
    void reset(PyObject* obj) {
        Py_XDECREF(obj_);
        obj_ = obj;
    }
    explicit operator bool() const { return obj_ != nullptr; }

  private:
    PyObject* obj_;
};

// The pending Python exception as one line ("ImageError: ..."), cleared.
std::string python_error() {
    PyObject *type = nullptr, *value = nullptr, *trace = nullptr;
    PyErr_Fetch(&type, &value, &trace);
    PyErr_NormalizeException(&type, &value, &trace);
    std::string text = "unknown Python error";
    if (value) {
        Ref str(PyObject_Str(value));
        const char* utf8 = str ? PyUnicode_AsUTF8(str.get()) : nullptr;
        const char* name = type ? reinterpret_cast<PyTypeObject*>(type)->tp_name : "Exception";
        text = std::string(name) + ": " + (utf8 ? utf8 : "?");
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(trace);
    PyErr_Clear();
    return text;
}

bool parse_args(int argc, char** argv, Options& opt) {
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        auto value = [&](const char* name) -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "error: %s needs a value\n", name);
                return nullptr;
            }
            return argv[++i];
        };
        if (arg == "--model") {
            const char* v = value("--model");
            if (!v) return false;
            opt.model = v;
        } else if (arg == "--runtime") {
            const char* v = value("--runtime");
            if (!v) return false;
            opt.runtime = v;
        } else if (arg == "--threads") {
            const char* v = value("--threads");
            if (!v) return false;
            opt.threads = std::atoi(v);
            if (opt.threads < 1) {
                std::fprintf(stderr, "error: --threads must be >= 1\n");
                return false;
            }
        } else if (arg == "--bgr") {
            opt.bgr = true;
        } else if (arg == "-h" || arg == "--help") {
            std::printf("usage: %s [--model DIR] [--runtime NAME] [--bgr] [--threads N] IMAGE...\n", argv[0]);
            std::exit(0);
        } else if (!arg.empty() && arg[0] == '-' && arg != "-") {
            std::fprintf(stderr, "error: unknown option %s\n", arg.c_str());
            return false;
        } else {
            opt.images.push_back(arg);
        }
    }
    if (opt.images.empty()) {
        std::fprintf(stderr, "usage: %s [--model DIR] [--runtime NAME] [--bgr] [--threads N] IMAGE...\n", argv[0]);
        return false;
    }
    return true;
}

bool start_python() {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    const char* python = std::getenv("RAM_EDGE_PYTHON");
    if (!python || !*python) python = RAM_EDGE_DEFAULT_PYTHON;
    // Python finds its prefix (and a venv's pyvenv.cfg and site-packages) from the executable's path.
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python);
    if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        std::fprintf(stderr, "error: cannot start Python %s: %s\n", python, status.err_msg ? status.err_msg : "?");
        return false;
    }
    return true;
}

// Tagger.load(model, runtime=...); nullptr (message printed) on failure.
PyObject* load_tagger(const Options& opt) {
    Ref module(PyImport_ImportModule("ram_edge"));
    if (!module) {
        std::fprintf(stderr, "error: cannot import ram_edge (%s); install it into the Python given by RAM_EDGE_PYTHON\n",
                     python_error().c_str());
        return nullptr;
    }
    Ref model;
    if (opt.model.empty()) {
        Ref defaults(PyImport_ImportModule("ram_edge.default_model"));
        if (defaults) model.reset(PyObject_CallMethod(defaults.get(), "default_model_path", nullptr));
    } else {
        model.reset(PyUnicode_FromString(opt.model.c_str()));
    }
    if (!model) {
        std::fprintf(stderr, "error: %s\n", python_error().c_str());
        return nullptr;
    }
    Ref cls(PyObject_GetAttrString(module.get(), "Tagger"));
    Ref load(cls ? PyObject_GetAttrString(cls.get(), "load") : nullptr);
    Ref args(PyTuple_Pack(1, model.get()));
    Ref kwargs(Py_BuildValue("{s:s}", "runtime", opt.runtime.c_str()));
    PyObject* tagger = (load && args && kwargs) ? PyObject_Call(load.get(), args.get(), kwargs.get()) : nullptr;
    if (!tagger) std::fprintf(stderr, "error: %s\n", python_error().c_str());
    return tagger;
}

// "IMAGE: tag 0.93, tag 0.88" from a TagResult, as `ram-edge tag` prints it.
bool format_result(const std::string& image, PyObject* result, std::string& line) {
    Ref tags(PyObject_GetAttrString(result, "tags"));
    if (!tags || !PyList_Check(tags.get())) return false;
    line = image + ": ";
    Py_ssize_t n = PyList_GET_SIZE(tags.get());
    if (n == 0) line += "(no tags)";
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* tag = PyList_GET_ITEM(tags.get(), i);  // borrowed
        Ref name(PyObject_GetAttrString(tag, "tag"));
        Ref score(PyObject_GetAttrString(tag, "score"));
        const char* text = name ? PyUnicode_AsUTF8(name.get()) : nullptr;
        if (!text || !score) return false;
        char buffer[32];
        std::snprintf(buffer, sizeof buffer, " %.2f", PyFloat_AsDouble(score.get()));
        line += (i ? ", " : "") + std::string(text) + buffer;
    }
    return true;
}

// Decode in C++ (no GIL needed), then tag the C++ buffer through a memoryview (GIL held only for Python).
Outcome tag_one(PyObject* tagger, const std::string& path, bool bgr) {
    int width = 0, height = 0, channels = 0;
    unsigned char* pixels = stbi_load(path.c_str(), &width, &height, &channels, 3);
    if (!pixels) return {"", path + ": cannot decode (" + (stbi_failure_reason() ? stbi_failure_reason() : "?") + ")"};
    const Py_ssize_t stride = static_cast<Py_ssize_t>(width) * 3;
    if (bgr) {  // what an OpenCV host would hold
        for (Py_ssize_t i = 0; i < stride * height; i += 3) std::swap(pixels[i], pixels[i + 2]);
    }
    Outcome out;
    PyGILState_STATE gil = PyGILState_Ensure();
    {
        Ref view(PyMemoryView_FromMemory(reinterpret_cast<char*>(pixels), stride * height, PyBUF_READ));
        Ref method(PyObject_GetAttrString(tagger, "tag_pixels"));
        Ref args(view ? Py_BuildValue("(Oii)", view.get(), height, width) : nullptr);
        Ref kwargs(Py_BuildValue("{s:n,s:s}", "row_stride", stride, "channels", bgr ? "bgr" : "rgb"));
        Ref result((method && args && kwargs) ? PyObject_Call(method.get(), args.get(), kwargs.get()) : nullptr);
        if (!result || !format_result(path, result.get(), out.line)) out.error = path + ": " + python_error();
        // The memoryview must not outlive the pixels: release it before freeing them.
        if (view) {
            Ref released(PyObject_CallMethod(view.get(), "release", nullptr));
            if (!released) PyErr_Clear();
        }
    }
    PyGILState_Release(gil);
    stbi_image_free(pixels);
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    Options opt;
    if (!parse_args(argc, argv, opt)) return 2;
    if (!start_python()) return 2;
    PyObject* tagger = load_tagger(opt);
    if (!tagger) {
        Py_FinalizeEx();
        return 2;
    }
    std::vector<Outcome> outcomes(opt.images.size());
    // Let worker threads take the GIL while this thread waits for them.
    PyThreadState* main_state = PyEval_SaveThread();
    {
        std::vector<std::thread> workers;
        const size_t count = static_cast<size_t>(opt.threads);
        for (size_t w = 0; w < count; ++w) {
            workers.emplace_back([&, w] {
                for (size_t i = w; i < opt.images.size(); i += count) outcomes[i] = tag_one(tagger, opt.images[i], opt.bgr);
            });
        }
        for (auto& worker : workers) worker.join();
    }
    PyEval_RestoreThread(main_state);
    int failed = 0;
    for (const auto& outcome : outcomes) {
        if (outcome.error.empty()) {
            std::printf("%s\n", outcome.line.c_str());
        } else {
            std::fprintf(stderr, "error: %s\n", outcome.error.c_str());
            ++failed;
        }
    }
    {
        Ref closed(PyObject_CallMethod(tagger, "close", nullptr));  // frees the runtime's memory before Python ends
        if (!closed) PyErr_Clear();
    }
    Py_DECREF(tagger);
    if (Py_FinalizeEx() < 0) failed = failed ? failed : 1;
    if (failed) std::fprintf(stderr, "%d of %zu image(s) failed\n", failed, opt.images.size());
    return failed ? 1 : 0;
}
